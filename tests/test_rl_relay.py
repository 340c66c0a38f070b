"""The real-pair RL job's parts on tiny models: group advantages, relay rollouts with a scripted call, a
LoRA update that never learns from teacher tokens, the problem pool and resuming from round folders."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from offline import rl_parts, rl_relay  # noqa: E402
from offline.rewards import RewardCfg  # noqa: E402
from offline.tasks.base import Problem  # noqa: E402
from relay_demo.backends.hf_engine import HFEngine  # noqa: E402
from relay_demo.pairs import Pair  # noqa: E402
from relay_demo.relay import Limits  # noqa: E402

from .models import QWEN_TOKENIZER, bpe_chain_models, qwen_tokenizer, random_qwen2, save  # noqa: E402

pytestmark = pytest.mark.skipif(not QWEN_TOKENIZER.is_dir(), reason="needs ../shared/fixtures")


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


def test_advantages_are_relative_within_a_group():
    adv = rl_parts.advantages([1.5, 0.0, 0.0, 0.0], scale=True)
    assert sum(adv) == pytest.approx(0.0)
    assert adv[0] == pytest.approx(3**0.5) and adv[1] == pytest.approx(-(3**-0.5))
    assert rl_parts.advantages([1.5, 0.0, 0.0, 0.0], scale=False) == pytest.approx(
        [1.125, -0.375, -0.375, -0.375]
    )
    assert rl_parts.advantages([0.9, 0.9, 0.9], scale=True) == [0.0, 0.0, 0.0]  # no preference, no gradient


def test_rollouts_record_calls_rewards_and_the_source_mask(tok):
    s, t = bpe_chain_models(tok)
    pair = Pair("chain", HFEngine(s, tok, "s"), HFEngine(t, tok, "t"), Limits(max_n=16, max_tokens=64))
    cfg = rl_relay.RlCfg(group=2, temperature=1.0)
    problems = [Problem("p/0", "hi", "42", "gsm8k"), Problem("p/1", "hi", "7", "gsm8k")]
    rows = rl_relay.rollouts(cfg, pair, problems)
    assert [r["id"] for r in rows] == ["p/0", "p/0", "p/1", "p/1"]
    for r in rows:
        # the scripted student calls once; the teacher writes 3 of the 16 response tokens
        assert r["calls"] == 1 and r["call_ratio"] == pytest.approx(3 / 16)
        assert r["source_mask"] == [1] * 11 + [0] * 3 + [1] * 2
        assert len(r["token_ids"]) == len(r["source_mask"])
        # nobody solved it and every rollout called: the paper's rho = call ratio, alike in the group
        assert not r["correct"] and r["reward"] == pytest.approx(3 / 16) and r["advantage"] == 0.0


def _adapter(tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = save(random_qwen2(tok, hidden=64, layers=1, seed=5), tok, tmp_path / "base")
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    with torch.no_grad():  # B starts at zero: give it a value, so that A receives a gradient too
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def test_update_learns_from_student_tokens_only_and_saves_a_resumable_round(tok, tmp_path):
    base, adapter = _adapter(tok, tmp_path)
    cfg = rl_relay.RlCfg(
        student=base, init_adapter=str(adapter), lr=1e-2, token_lr=0.0, train_dtype="float32"
    )
    learner = rl_parts.Learner(cfg, adapter)
    g = torch.Generator().manual_seed(0)
    row = {
        "prompt_ids": torch.randint(0, 1000, (5,), generator=g).tolist(),
        "token_ids": torch.randint(0, 1000, (8,), generator=g).tolist(),
        "source_mask": [1, 1, 1, 0, 0, 0, 1, 1],
        "advantage": 1.0,
    }
    # the gradient reaching the final hidden states: none at positions predicting a teacher token
    kept = {}

    def hook(_, __, out):
        out.retain_grad()
        kept["h"] = out

    handle = learner.model.base_model.model.model.norm.register_forward_hook(hook)
    try:
        learner._loss(*learner._batch([row])).backward()
    finally:
        handle.remove()
    grad = kept["h"].grad[0].abs().sum(-1)
    start = len(row["prompt_ids"])
    predicts = {start - 1 + i: m for i, m in enumerate(row["source_mask"])}  # position t predicts token t+1
    assert all(grad[p] == 0 for p, m in predicts.items() if m == 0)
    assert all(grad[p] > 0 for p, m in predicts.items() if m == 1)
    assert float(grad[: start - 1].sum()) == 0.0  # the prompt is never a target

    learner.opt.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    idle = dict(row, advantage=0.0)
    stats = learner.step([row, idle])
    assert stats["trained_rollouts"] == 1 and stats["trained_tokens"] == 5
    after = {n: p for n, p in learner.model.named_parameters() if p.requires_grad}
    # how far B·A moved, against a direct computation from the weights before and after
    delta = {}
    for n in before:
        if ".lora_A." in n:
            b = n.replace(".lora_A.", ".lora_B.")
            delta[n] = (before[b] @ before[n], after[b].detach() @ after[n].detach())
    moved = sum(float((w1 - w0).square().sum()) for w0, w1 in delta.values()) ** 0.5
    size = sum(float(w0.square().sum()) for w0, _ in delta.values()) ** 0.5
    assert stats["moved"] > 0 and stats["moved"] == pytest.approx(moved / size, rel=1e-3, abs=1e-5)
    one = {"q": (torch.tensor([[1.0]]), torch.tensor([[2.0]]))}
    assert rl_parts.lora_moved(one, {"q": (torch.tensor([[1.5]]), torch.tensor([[2.0]]))}) == 0.5
    assert any(not torch.equal(before[n], after[n]) for n in before)

    out = tmp_path / "round-001"
    learner.save(out)
    assert (out / "adapter_config.json").is_file() and (out / "optimizer.pt").is_file()
    assert "round-001" in (out / "README.md").read_text()  # peft's placeholder card gives way to ours
    again = rl_parts.Learner(cfg, out)  # a resumed run starts from the saved weights and optimizer moments
    for n, p in again.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, after[n])
    assert again.opt.state_dict()["state"].keys() == learner.opt.state_dict()["state"].keys()


def test_a_call_bias_in_the_rollouts_is_part_of_the_policy_the_update_scores(tok, tmp_path):
    """Rollouts decoded at call bias b were sampled from the student's logits plus b on <call>: the loss
    scores them under that same policy (and without a bias, under the student's own)."""
    from relay_demo.adapters import add_command_tokens, command_ids

    ctok = add_command_tokens(tok)
    base, adapter = _adapter(ctok, tmp_path)
    call = command_ids(ctok)[0]
    g = torch.Generator().manual_seed(1)
    row = {
        "prompt_ids": torch.randint(0, 1000, (4,), generator=g).tolist(),
        "token_ids": [11, call, 18, 20, 13],
        "source_mask": [1, 1, 1, 1, 1],
        "advantage": 1.0,
    }
    scored = {}
    for bias in (0.0, 2.0):
        cfg = rl_relay.RlCfg(student=base, init_adapter=str(adapter), train_dtype="float32", call_bias=bias)
        learner = rl_parts.Learner(cfg, adapter)
        with torch.no_grad():
            scored[bias] = -float(learner._loss(*learner._batch([row])))  # advantage 1: the summed log p
            ids = torch.tensor([row["prompt_ids"] + row["token_ids"]])
            logits = learner.model(input_ids=ids).logits[0, 3:-1].float()
        logits[:, call] += bias
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(row["token_ids"])[:, None]).sum()
        assert scored[bias] == pytest.approx(float(want), rel=1e-4)
    assert scored[2.0] != pytest.approx(scored[0.0], rel=1e-3)
    plain = _adapter(tok, tmp_path / "plain")
    no_command = rl_relay.RlCfg(
        student=plain[0], init_adapter=str(plain[1]), train_dtype="float32", call_bias=1.0
    )
    with pytest.raises(ValueError, match="one token"):
        rl_parts.Learner(no_command, plain[1])


def test_pool_leaves_out_dev_and_labelled_problems_in_a_seeded_order(tmp_path):
    problems = [Problem(f"t/{i}", f"q{i}", "1", "gsm8k") for i in range(50)]
    (tmp_path / "dev.json").write_text(json.dumps(["t/1", "t/2"]))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "rollouts.jsonl").write_text('{"id": "t/3"}\n{"id": "t/4"}\n')
    cfg = rl_relay.RlCfg(dev_ids=str(tmp_path / "dev.json"), exclude=[str(tmp_path / "labels")])
    order = rl_relay.pool(cfg, problems)
    assert {p.id for p in order} == {f"t/{i}" for i in range(50)} - {"t/1", "t/2", "t/3", "t/4"}
    assert order == rl_relay.pool(cfg, problems) and order != sorted(order, key=lambda p: int(p.id[2:]))


def test_rounds_resume_after_the_last_saved_adapter_and_keep_dev_points(tmp_path):
    init = tmp_path / "init"
    init.mkdir()
    (init / "adapter_config.json").write_text("{}")
    cfg = rl_relay.RlCfg(init_adapter=str(init), work=str(tmp_path / "work"), eval_every=4, keep_adapters=2)
    assert rl_relay._last_round(cfg) == 0  # the starting adapter becomes round-000
    for rnd in range(1, 10):
        folder = rl_relay._round_dir(cfg, rnd)
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
    (tmp_path / "work" / "adapters" / "round-010.partial").mkdir()  # a save killed midway does not count
    assert rl_relay._last_round(cfg) == 9
    rl_relay._prune(cfg, 9)
    left = sorted(p.name for p in (tmp_path / "work" / "adapters").glob("round-[0-9][0-9][0-9]"))
    assert left == ["round-000", "round-004", "round-008", "round-009"]


def test_a_lost_work_folder_is_refused_not_trained_over(tmp_path):
    init = tmp_path / "init"
    init.mkdir()
    (init / "adapter_config.json").write_text("{}")
    log = tmp_path / "rl.jsonl"
    log.write_text(
        '{"stage":"rollouts","round":0}\n{"stage":"update","round":0}\n{"stage":"update","round":1}\n'
    )
    cfg = rl_relay.RlCfg(init_adapter=str(init), work=str(tmp_path / "work"), metrics=str(log))
    with pytest.raises(SystemExit, match="up to round 1, but .* only up to round 0"):
        rl_relay.check_work_state(cfg, rl_relay._last_round(cfg))
    for rnd in (1, 2):
        (rl_relay._round_dir(cfg, rnd)).mkdir()
        (rl_relay._round_dir(cfg, rnd) / "adapter_config.json").write_text("{}")
    rl_relay.check_work_state(cfg, rl_relay._last_round(cfg))  # two updates logged, two adapters: resumes


def test_config_rejects_groups_of_one_and_greedy_repeats():
    with pytest.raises(ValueError, match="group"):
        rl_relay.RlCfg(group=1).validate()
    with pytest.raises(ValueError, match="filter_temperature"):
        rl_relay.RlCfg(filter_k=2, filter_temperature=0.0).validate()
    RlCfg = rl_relay.RlCfg
    assert RlCfg(reward=RewardCfg()).reward.solo_bonus == 1.5


class _Engines:
    """Stands in for ``rl_parts.Engines`` (vLLM): the same pair whatever the adapter; counts the loads."""

    def __init__(self, pair):
        self.pair, self.loads, self.dtype = pair, [], "float32"

    def student_of(self, adapter):
        self.loads.append(adapter.name)
        return self.pair


def test_dev_points_keep_per_problem_answers_and_a_bias_sweep_reuses_the_twin(tok, tmp_path, monkeypatch):
    from offline import rl_dev
    from offline.common import Jsonl
    from relay_demo import relay as relay_mod

    s, t = bpe_chain_models(tok)
    pair = Pair("chain", HFEngine(s, tok, "s"), HFEngine(t, tok, "t"), Limits(max_n=16, max_tokens=64))
    dev = [Problem("p/0", "hi", "42", "gsm8k"), Problem("p/1", "hi", "Done", "gsm8k")]
    monkeypatch.setattr(rl_dev, "teacher_alone", lambda run: {"p/0": True, "p/1": False})
    batches = []
    real = relay_mod.relay_batch

    def counted(*a, **k):
        batches.append(k["limits"].max_calls)
        return real(*a, **k)

    monkeypatch.setattr(relay_mod, "relay_batch", counted)
    cfg = rl_relay.RlCfg(max_n=16, eval_max_tokens=64, work=str(tmp_path / "work"))
    adapter = tmp_path / "round-004"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    point = rl_dev.dev_point(cfg, _Engines(pair), adapter, dev, 4, 0.0)
    assert batches == [cfg.max_calls, 0]  # the relay, then its twin with calls off
    assert point["call_bias"] == 0.0 and len(point["relay_ok"]) == len(point["free_ok"]) == 2
    assert point["accuracy"] == point["relay_ok"].count("1") / 2
    assert point["teacher_free_accuracy"] == point["free_ok"].count("1") / 2
    assert point["problems_calling"] == 2 and point["calls_per_problem"] == 1.0  # the scripted student calls
    assert point["calling_teacher_fails"] == 1  # p/1: the teacher alone fails it (the stand-in above)

    curve = Jsonl(tmp_path / "curve.jsonl")
    # (the scripted student's "<call>" is several tokens, so a nonzero bias cannot act on it: the earlier
    # point is relabelled instead)
    curve.append([{**point, "call_bias": 1.0}])
    engines = _Engines(pair)
    sweep = dataclasses.replace(cfg, sweep_rounds=[4], sweep_biases=[1.0, 0.0])
    batches.clear()
    made = rl_dev.sweep(sweep, engines, lambda rnd: tmp_path / f"round-{rnd:03d}", dev, curve)
    assert [p["call_bias"] for p in made] == [0.0]  # bias 1 of round 4 was there already
    assert batches == [cfg.max_calls]  # the twin's answers came from the round's first point
    assert made[0]["free_ok"] == point["free_ok"] and engines.loads == ["round-004"]
    assert rl_dev.sweep(sweep, engines, lambda rnd: tmp_path / f"round-{rnd:03d}", dev, curve) == []
    with pytest.raises(FileNotFoundError, match="round 8"):
        missing = dataclasses.replace(sweep, sweep_rounds=[8])
        rl_dev.sweep(missing, engines, lambda r: tmp_path / "x", dev, curve)
    with pytest.raises(ValueError, match="sweep"):
        rl_relay.RlCfg(sweep_rounds=[4]).validate()


def test_dev_points_compare_paired(capsys, tmp_path):
    from offline import rl_compare, rl_dev
    from offline.common import Jsonl

    rows = [
        {"round": 0, "relay_ok": "1100000000", "free_ok": "1000000000"},
        {"round": 4, "call_bias": -1.0, "relay_ok": "1111110000", "free_ok": "1000000000"},
        {"round": 8, "accuracy": 0.3},  # written before per-problem answers were kept
    ]
    assert rl_dev.answers(rows, "4@-1") == [True] * 6 + [False] * 4
    assert rl_dev.answers(rows, "0/free") == [True] + [False] * 9
    text = rl_dev.compare(rows, "4@-1", "0@0")
    assert (
        text.startswith("4@-1 - 0@0 on 10 dev problems: +40.0 points")
        and "only 4@-1 solves 4, only 0@0 0" in text
    )
    assert "exact McNemar p = 0.12: within noise" in text  # 4 discordant, all one way: 2 * 0.5**4
    for bad, why in (
        ("8@0", "points that have them: \\['0@0', '4@-1'\\]"),
        ("x", "ROUND@BIAS"),
        ("0@0/t", "/free"),
    ):
        with pytest.raises(ValueError, match=why):
            rl_dev.answers(rows, bad)
    Jsonl(tmp_path / "c.jsonl").append(rows)
    assert rl_compare.main(["4@-1", "0@0/free", "--curve", str(tmp_path / "c.jsonl")]) == 0
    assert "+50.0 points" in capsys.readouterr().out
    assert rl_compare.main(["9@0", "0@0", "--curve", str(tmp_path / "c.jsonl")]) == 2
    fp32 = [*rows, {"round": 12, "relay_ok": "1111111000", "free_ok": "1000000000", "dtype": "float32"}]
    with pytest.raises(ValueError, match="bfloat16 and float32: compare like with like"):
        rl_dev.compare(fp32, "12@0", "0@0")  # greedy decodes differ between the two dtypes


def test_export_copies_a_chosen_round_without_its_optimizer(tmp_path):
    from offline.common import Jsonl

    init = tmp_path / "init"
    init.mkdir()
    (init / "adapter_config.json").write_text("{}")
    cfg = rl_relay.RlCfg(
        init_adapter=str(init),
        work=str(tmp_path / "work"),
        metrics=str(tmp_path / "rl.jsonl"),
        curve=str(tmp_path / "dev.jsonl"),
        export_round=1,
        export_to=str(tmp_path / "relay-grpo"),
    )
    rl_relay._last_round(cfg)
    one = rl_relay._round_dir(cfg, 1)
    one.mkdir()
    import safetensors.torch
    import torch

    (one / "optimizer.pt").write_text("optimizer.pt")
    (one / "adapter_config.json").write_text(
        '{"base_model_name_or_path": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}'
    )
    trained = {"a.lora_A.weight": torch.randn(4, 8), "steps": torch.tensor([3])}
    safetensors.torch.save_file(trained, one / "adapter_model.safetensors")
    Jsonl(tmp_path / "rl.jsonl").append(
        [
            {"stage": "rollouts", "round": 0, "rollouts": 64, "secs": 60.0},
            {"stage": "update", "round": 0, "secs": 60.0},
        ]
    )
    Jsonl(tmp_path / "dev.jsonl").append([{"round": 0, "accuracy": 0.2}, {"round": 1, "accuracy": 0.3}])
    out = rl_relay.export(cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",  # a model card naming the base by its hub name and the round
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_summary.json",
    ]
    card = (out / "README.md").read_text()
    assert "base_model: Qwen/Qwen2.5-Coder-0.5B-Instruct" in card and "round 1 " in card
    assert str(tmp_path) not in card
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["round"] == 1 and summary["rollouts"] == 64 and summary["minutes"] == 2.0
    assert summary["dev_points"] == [{"round": 1, "accuracy": 0.3}]
    served = safetensors.torch.load_file(out / "adapter_model.safetensors")  # bf16 by default: half the size
    assert served["a.lora_A.weight"].dtype == torch.bfloat16 and summary["dtype"] == "bfloat16"
    assert torch.allclose(served["a.lora_A.weight"].float(), trained["a.lora_A.weight"], rtol=1e-2)
    assert served["steps"].dtype == torch.int64
    full = rl_relay.export(dataclasses.replace(cfg, export_dtype="float32"))
    assert torch.equal(
        safetensors.torch.load_file(full / "adapter_model.safetensors")["a.lora_A.weight"],
        trained["a.lora_A.weight"],
    )
    with pytest.raises(FileNotFoundError, match="round 5"):
        rl_relay.export(dataclasses.replace(cfg, export_round=5))
    with pytest.raises(ValueError, match="export"):
        rl_relay.RlCfg(export_round=3).validate()


def test_the_carried_round_lets_a_fresh_machine_go_on(tmp_path):
    # runs 1 and 2 lost their ignored work folder between sessions; `carry` (committed) keeps the newest round
    import safetensors.torch

    from offline import rl_carry

    init = tmp_path / "init"
    init.mkdir()
    (init / "adapter_config.json").write_text("{}")
    log = tmp_path / "rl.jsonl"
    log.write_text('{"stage":"update","round":0}\n{"stage":"update","round":1}\n')
    cfg = rl_relay.RlCfg(
        init_adapter=str(init), work=str(tmp_path / "work"), metrics=str(log), carry=str(tmp_path / "carry")
    )
    rl_relay._last_round(cfg)
    two = rl_relay._round_dir(cfg, 2)
    two.mkdir()
    (two / "adapter_config.json").write_text('{"r": 16}')
    (two / "optimizer.pt").write_text("moments")
    safetensors.torch.save_file({"a.lora_A.weight": torch.randn(4, 8)}, two / "adapter_model.safetensors")
    work = tmp_path / "work"
    (work / "filter.jsonl").write_text('{"id":"p/1","kept":true}\n')
    rl_carry.save(tmp_path / "carry", two, 2, work / "filter.jsonl")
    carried = sorted(p.name for p in (tmp_path / "carry").iterdir())
    assert carried == ["adapter_config.json", "adapter_model.safetensors", "filter.jsonl", "state.json"]
    weights = safetensors.torch.load_file(tmp_path / "carry" / "adapter_model.safetensors")
    assert weights["a.lora_A.weight"].dtype == torch.bfloat16  # 17 MB for the real pair, not 34

    import shutil

    shutil.rmtree(work)  # the next session's machine: no work folder
    with pytest.raises(SystemExit, match="work state is gone"):
        rl_relay.check_work_state(cfg, rl_relay._last_round(cfg))
    round_dir = lambda r: rl_relay._round_dir(cfg, r)  # noqa: E731
    got = rl_carry.restore(tmp_path / "carry", round_dir, rl_relay._last_round(cfg), work / "filter.jsonl")
    assert got == 2 and (work / "filter.jsonl").read_text() == '{"id":"p/1","kept":true}\n'
    assert sorted(p.name for p in rl_relay._round_dir(cfg, 2).iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]  # no optimizer state: the learner restarts AdamW and says so
    rl_relay.check_work_state(cfg, rl_relay._last_round(cfg))  # resumes at round 2
    assert rl_carry.restore(tmp_path / "carry", round_dir, 2, work / "filter.jsonl") is None
    (tmp_path / "carry").rename(tmp_path / "carry.old")  # killed between save's two renames
    (rl_relay._round_dir(cfg, 2) / "adapter_config.json").unlink()  # and the round left half-copied
    assert rl_carry.restore(tmp_path / "carry", round_dir, 1, work / "filter.jsonl") == 2
