"""Command line: relay-decode one prompt.

    python -m relay_demo generate --pair tiny-arith --policy learned --prompt "..." [--backend hf|vllm]
        [--max-new-tokens K] [--temperature T] [--seed S] [--max-n N] [--max-calls C]
        [--tau 0.5 | --p 0.05 | --every 16 | --router PATH --threshold 0.5 | --call-bias 1] [--n 1] [--json]

    python -m relay_demo serve --pair tiny-arith [--port 8000] [--api-key KEY] [policy flags]  (see serve.py)

Either command takes ``--teacher-url URL`` and ``--student-url URL`` (a vLLM OpenAI server holding that model;
``--tokenizer DIR`` when the pair's folders are not on this machine, ``--remote-timeout-s``): see
``relay_demo.backends.remote``.

Without ``--json`` the answer streams to the terminal, teacher spans in colour. With ``--json`` it prints one
object: {"text", "spans": [{"source", "text", "tokens"}], "stats": {...}}. Bad arguments: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .flags import add_remote_flags, pair_kwargs, policy_from_args

COLOURS = {"student": "", "teacher": "\033[1;36m", "command": "\033[1;33m"}
RESET = "\033[0m"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, no usage dump
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .knobs import TEMPERATURE, add_cli_flags
    from .pairs import PAIRS
    from .policies import POLICIES

    ap = _Parser(prog="python -m relay_demo", description="RelayLLM collaborative decoding")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="relay-decode one prompt")
    g.add_argument("--pair", required=True, choices=PAIRS)
    g.add_argument("--policy", default="learned", choices=list(POLICIES))
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt (one user turn)")
    src.add_argument(
        "--prompt-file", metavar="PATH", help="read the prompt from a UTF-8 file, '-' for standard input"
    )
    g.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="response token budget (default: the pair's)"
    )
    g.add_argument("--max-n", type=int, default=None, help="cap on tokens per call (default: the pair's)")
    g.add_argument("--max-calls", type=int, default=None)
    g.add_argument("--max-wall-s", type=float, default=None)
    g.add_argument("--temperature", type=float, default=TEMPERATURE.default, help="0 = greedy; at most 2")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    add_cli_flags(g)  # the policy knobs, declared once (relay_demo/knobs.py)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_remote_flags(g)
    from .serve import add_parser

    add_parser(sub)
    return ap


MAX_PROMPT_BYTES = 16 * 2**20  # far past any pair's prompt limit; a larger file is a mistake


def read_prompt(path: str) -> str:
    """The prompt from a file or standard input (``-``), strictly UTF-8: bad bytes are an error naming
    where."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise ValueError(f"cannot read --prompt-file {path}: {e.strerror or e}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise ValueError(f"--prompt-file {path}: larger than {MAX_PROMPT_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt-file {path}: not valid UTF-8 (byte {e.start})") from None


def generate(a) -> int:
    from dataclasses import replace

    from .backends.base import Sampling
    from .knobs import TEMPERATURE
    from .pairs import load_pair
    from .protocol import visible
    from .relay import relay_stream, validate_prompt

    prompt = a.prompt if a.prompt is not None else read_prompt(a.prompt_file)
    validate_prompt(prompt)
    policy = policy_from_args(a)
    sampling = Sampling(temperature=TEMPERATURE.check(a.temperature), top_p=a.top_p, seed=a.seed)
    if a.backend == "vllm":
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    pair = load_pair(a.pair, backend=a.backend, **pair_kwargs(a))
    overrides = {
        k: v
        for k, v in (
            ("max_tokens", a.max_new_tokens),
            ("max_n", a.max_n),
            ("max_calls", a.max_calls),
            ("max_wall_s", a.max_wall_s),
        )
        if v is not None
    }
    limits = replace(pair.limits, **overrides)
    stream = relay_stream(pair, prompt, policy, limits=limits, sampling=sampling)
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for span in stream:
        if a.json:
            continue
        text = visible(span.text)  # the model's ESC or backspace never reaches the terminal as one
        sys.stdout.write(f"{COLOURS[span.source]}{text}{RESET}" if colour and COLOURS[span.source] else text)
        sys.stdout.flush()
    result = stream.value
    if a.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        s = result.stats()
        print(
            f"\n--- student {s['student_tokens']} · teacher {s['teacher_tokens']}"
            f" · command {s['command_tokens']} · calls {s['calls']} · call ratio {s['call_ratio']:.2%}"
            f" · {s['finish_reason']} · {s['wall_s']:.2f}s",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from .backends.base import ModelUnavailable

    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "serve":
            from .serve import serve

            return serve(a)
        return generate(a)
    except (ValueError, FileNotFoundError, NotImplementedError, ModelUnavailable) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"error: {msg}\n")
        return 2
