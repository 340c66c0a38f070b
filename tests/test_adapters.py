"""Command tokens in Qwen2.5's spare rows, LoRA warm-up on call labels (source mask), and the merged copy.

On the real Qwen2.5 tokenizer (the shared fixture) and a tiny random Qwen2 model with its 151,936 rows."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from relay_demo.adapters import add_command_tokens, command_ids, merged_student  # noqa: E402
from relay_demo.protocol import find_command  # noqa: E402

ROWS = 151936


@pytest.fixture(scope="module")
def qwen_tok(shared_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_dir / "fixtures" / "qwen2.5-tokenizer")


def test_command_tokens_take_spare_rows_without_resize(qwen_tok, tmp_path):
    assert command_ids(qwen_tok) is None
    n = len(qwen_tok)
    tok = add_command_tokens(qwen_tok, ROWS)
    assert command_ids(tok) == (151665, 151666)
    assert len(tok) == n <= ROWS  # renamed placeholders: nothing added past the embedding
    ids = tok.encode("x<call>32</call>y", add_special_tokens=False)
    assert ids == [87, 151665, 18, 17, 151666, 88]
    # the relay's detokeniser keeps special tokens: the protocol sees the command exactly
    text = tok.decode(ids, skip_special_tokens=False)
    assert text == "x<call>32</call>y" and find_command(text[:-1], 100).n == 32
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert command_ids(again) == (151665, 151666)
    assert add_command_tokens(again, ROWS) is again  # idempotent
    # user text is still text: the chat template's own specials are unchanged
    chat = again.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.endswith("<|im_start|>assistant\n")


def test_command_tokens_refused_when_no_spare_row(qwen_tok):
    from relay_demo.tiny_random import byte_tokenizer

    with pytest.raises(ValueError, match="embedding rows"):
        add_command_tokens(byte_tokenizer(), n_rows=259)


@pytest.fixture(scope="module")
def tiny_student(qwen_tok, tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("student")
    cfg = Qwen2Config(
        vocab_size=ROWS, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=qwen_tok.convert_tokens_to_ids("<|im_end|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    qwen_tok.save_pretrained(folder)
    return folder


def _examples(tok, folder):
    from offline.tasks import load_benchmark

    probs = load_benchmark("gsm8k", split="train")[:3]
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    rows = [
        {"id": probs[0].id, "prefix_ids": enc("Natalia sold"), "n": 32, "teacher_ids": enc(" 48/2 = 24"),
         "cont_ids": enc(" so 72.") + [tok.eos_token_id]},
        {"id": probs[1].id, "prefix_ids": enc("She earns 10.") + [tok.eos_token_id], "n": 0,
         "teacher_ids": [], "cont_ids": []},
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_rows_mask_the_teacher_span_and_the_control_has_no_command(qwen_tok, tmp_path):
    from offline.warmup_lora import build_rows

    tok = add_command_tokens(qwen_tok, ROWS)
    ex = _examples(tok, tmp_path)
    prompts = {e["id"]: [1, 2, 3] for e in ex}
    relay, control = build_rows(tok, ex, prompts, True), build_rows(tok, ex, prompts, False)
    ids, mask = relay[0]["input_ids"], relay[0]["assistant_masks"]
    call, end = command_ids(tok)
    i = ids.index(call)
    assert ids[i : i + 4] == [call, *tok.encode("32", add_special_tokens=False), end]
    teacher = ex[0]["teacher_ids"]
    j = i + 4
    assert ids[j : j + len(teacher)] == teacher and set(mask[j : j + len(teacher)]) == {0}
    assert mask[:3] == [0, 0, 0] and set(mask[3:j]) == {1} and set(mask[j + len(teacher) :]) == {1}
    assert call not in control[0]["input_ids"] and control[0]["assistant_masks"][3:] == [1] * (
        len(control[0]["input_ids"]) - 3
    )
    assert relay[1] == control[1]  # a no-call example is the same in both


def test_lora_warmup_trains_the_command_rows_and_the_merged_copy_matches(qwen_tok, tiny_student, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offline import warmup_lora

    labels = tmp_path / "labels"
    _examples(add_command_tokens(qwen_tok, ROWS), labels)
    cfg = warmup_lora.LoraWarmupCfg(
        student=str(tiny_student), labels=str(labels), out=str(tmp_path / "adapter"),
        metrics=str(tmp_path / "m.jsonl"), max_steps=3, batch_size=2, grad_accum=1, lr=1e-4, token_lr=5e-2,
        dtype="float32", threads=1, save_steps=2, lora_r=4, lora_alpha=8,
    )  # fmt: skip
    summary = warmup_lora.train(cfg)
    assert summary["steps"] == 3 and summary["examples"] == 2
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3
    base = AutoModelForCausalLM.from_pretrained(tiny_student)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_student), tmp_path / "adapter"
    )
    merged_dir = merged_student(tiny_student, tmp_path / "adapter", cache=tmp_path / "cache")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    e0, e1 = base.get_input_embeddings().weight, merged.get_input_embeddings().weight
    changed = (e0 - e1).abs().sum(-1).nonzero().flatten().tolist()
    assert changed == [151665, 151666]  # only the command rows of the embedding moved
    # at their own rate: Adam at the LoRA rate (1e-4) could move a row of 64 by at most ~3 * 1e-4 * 8 = 0.0024
    assert ((e0 - e1)[151665:151667].norm(dim=-1) > 0.05).all()
    assert command_ids(AutoTokenizer.from_pretrained(merged_dir)) == (151665, 151666)
    probe = torch.tensor([[87, 151665, 18, 17, 151666, 88]])
    with torch.no_grad():
        assert (merged(probe).logits - tuned(probe).logits).abs().max() < 1e-3
        assert (merged(probe).logits - base(probe).logits).abs().max() > 1e-3  # training did something
    assert json.loads((merged_dir / "merge_check.json").read_text())["max_abs_logit_diff"] < 1e-3
    assert (
        merged_student(tiny_student, tmp_path / "adapter", cache=tmp_path / "cache") == merged_dir
    )  # cached
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert not os.path.isabs(adapter_cfg["base_model_name_or_path"])  # no machine path in a committed file
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert str(tiny_student) not in card and str(tmp_path) not in card  # peft's card named the local folder
    assert "base_model: Qwen/Qwen2.5-Coder-0.5B-Instruct" in card and "warm-up relay student" in card
    (tmp_path / "adapter" / "README.md").write_text(card + "edited\n")  # a card is not weights: same copy
    assert merged_student(tiny_student, tmp_path / "adapter", cache=tmp_path / "cache") == merged_dir

    # a further epoch starts from the trained adapter (LoRA and command rows), trainable, not from scratch
    tok = add_command_tokens(AutoTokenizer.from_pretrained(tiny_student), ROWS)
    more = replace(cfg, init_adapter=str(tmp_path / "adapter"), out=str(tmp_path / "adapter2"))
    more.validate()
    start = warmup_lora.make_model(more, tok)
    with torch.no_grad():
        assert (start(probe).logits - tuned(probe).logits).abs().max() < 1e-5
    trainable = [n for n, p in start.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("trainable_tokens_delta" in n for n in trainable)
    with pytest.raises(ValueError, match="must differ"):
        replace(more, out=more.init_adapter).validate()


def test_an_adapter_without_its_tokenizer_gets_the_base_one_and_commands(qwen_tok, tmp_path, monkeypatch):
    """Committed adapters leave out the 11 MB tokenizer.json: rebuilt from the base model's, the same."""
    from transformers import AutoTokenizer

    from relay_demo.adapters import adapter_tokenizer, adapter_tokenizer_folder

    monkeypatch.setenv("RELAY_CACHE_DIR", str(tmp_path / "cache"))
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    qwen_tok.save_pretrained(base)
    adapter.mkdir()

    def rows(ids):
        conf = {"peft_type": "LORA", "trainable_token_indices": {"embed_tokens": ids, "lm_head": ids}}
        (adapter / "adapter_config.json").write_text(json.dumps(conf))

    rows([151665, 151666])
    want = add_command_tokens(qwen_tok, ROWS)
    got = adapter_tokenizer(base, adapter)
    assert got.backend_tokenizer.to_str() == want.backend_tokenizer.to_str()
    assert got.encode("x<call>32</call>y", add_special_tokens=False) == [87, 151665, 18, 17, 151666, 88]
    folder = adapter_tokenizer_folder(base, adapter)  # for a student served elsewhere: a folder, made once
    assert command_ids(AutoTokenizer.from_pretrained(folder)) == (151665, 151666)
    assert adapter_tokenizer_folder(base, adapter) == folder
    rows([151670, 151671])  # rows that are not the commands': refused, not silently mismatched
    with pytest.raises(ValueError, match="not the commands'"):
        adapter_tokenizer(base, adapter)
    rows([])  # an adapter that trained no rows keeps the base tokenizer
    assert command_ids(adapter_tokenizer(base, adapter)) is None
    want.save_pretrained(adapter)  # an adapter with its own tokenizer uses it
    assert adapter_tokenizer_folder(base, adapter) == adapter
