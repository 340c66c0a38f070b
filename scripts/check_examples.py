"""Run a pair's app examples as the Playground does and say which calls turn a wrong answer right.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/check_examples.py --pair qwen2.5-coder-0.5b-1.5b-relay
    ... --prompts /tmp/candidates.jsonl      # {prompt, answer} rows: candidates for the registry's examples

Each prompt runs with the pair's sidebar defaults (``defaults:`` in relay_demo/pairs.yaml; ``--temperature``
and ``--seed`` as the sidebar's), through the app's own generation (``ui/stream.generate``), then each of its
calls is blocked in turn and the answer continued from there (the call inspector's "Continue without this
call", ``ui/inspector.branch``). One line a prompt: the answer with its calls, and without each call. A call
*turns it right* when the answer is right with it and wrong without it. Exit status 1 when fewer than
``--need`` prompts have such a call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="qwen2.5-coder-0.5b-1.5b-relay")
    ap.add_argument("--prompts", help="a JSONL file of {prompt, answer} rows (default: the pair's examples)")
    ap.add_argument("--backend", default=os.environ.get("RELAY_BACKEND", "vllm"), choices=["vllm", "hf"])
    ap.add_argument("--temperature", type=float, help="default: the sidebar's for the pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--need", type=int, default=2, help="prompts with a call that turns the answer right")
    args = ap.parse_args(argv)
    os.environ["RELAY_BACKEND"] = args.backend

    from relay_demo import pairs
    from relay_demo.answers import answers_match
    from relay_demo.ui import handlers as h
    from relay_demo.ui import inspector
    from relay_demo.ui import pair_info as pi
    from relay_demo.ui.stream import generate

    if args.prompts:
        rows = [
            json.loads(line) for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line
        ]
        todo = [(str(r["prompt"]), str(r["answer"])) for r in rows]
    else:
        todo = [(p, pairs.example_answer(args.pair, p)) for p in pairs.examples(args.pair)]
    s = h.Settings(pair=args.pair, **pi.pair_defaults(args.pair), seed=args.seed)
    if args.temperature is not None:
        s = replace(s, temperature=args.temperature)
    turned = 0
    for prompt, gold in todo:
        pair, messages, policy, limits, sampling = h.prepare(prompt, [], s)
        *_, snap = generate(pair, messages, policy, limits, sampling)  # the last snapshot holds the result
        if snap.result is None:
            print(json.dumps({"prompt": prompt[:60], "error": snap.error or "no result"}), flush=True)
            continue
        rec = inspector.record(
            args.pair, pair, snap.result, messages, policy=policy, limits=limits, sampling=sampling
        )
        answer = h.final_answer(snap.result.text)
        right = answer is not None and gold is not None and answers_match(answer, gold)
        without = []
        for k in range(len(rec["calls"])):
            alt = h.final_answer(inspector.branch(pair, rec, k).text)
            without.append({"answer": alt, "right": alt is not None and answers_match(alt, gold or "")})
        turns = right and any(not w["right"] for w in without)
        turned += turns
        line = {
            "prompt": prompt[:70],
            "gold": gold,
            "answer": answer,
            "right": right,
            "calls": len(rec["calls"]),
        }
        print(json.dumps({**line, "without": without, "turns_right": turns}), flush=True)
    print(f"{turned} of {len(todo)} prompts have a call that turns the answer right (need {args.need})")
    return 0 if turned >= args.need else 1


if __name__ == "__main__":
    sys.exit(main())
