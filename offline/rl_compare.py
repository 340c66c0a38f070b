"""Compare two dev points of the RL stage, paired on the same dev problems (``offline/rl_dev.py``).

python -m offline.rl_compare 8@-2 0@0            # round 8 at call bias -2 against the warm-up student
python -m offline.rl_compare 8@0 8@0/free        # the relay against its teacher-free twin
"""

from __future__ import annotations

import argparse
import sys

from offline.common import Jsonl
from offline.rl_dev import compare
from offline.rl_parts import repo_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m offline.rl_compare", description="Compare two dev points, paired."
    )
    ap.add_argument("a", help="ROUND@BIAS or ROUND@BIAS/free, e.g. 8@0")
    ap.add_argument("b")
    ap.add_argument("--curve", default="results/training/qwen2.5-coder-0.5b-1.5b/rl-dev.jsonl")
    args = ap.parse_args(argv)
    try:
        print(compare(Jsonl(repo_path(args.curve)).rows(), args.a, args.b))
    except ValueError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
