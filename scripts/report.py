"""A pair's test results as the README's Markdown: settings with 95% intervals, then paired comparisons.

    .venv/bin/python scripts/report.py --pair "qwen2.5-coder-0.5b-1.5b · float32" --benchmark gsm8k \\
        --settings student teacher relay@0 relay-teacher-free sft-only relay-sft@0 \\
        --compare relay@0:sft-only relay@0:relay-sft@0 relay@0:relay-teacher-free

Everything comes from the store (``relay_demo.store``: the same numbers as ``store summary`` and ``store
compare``), so a README table regenerated with this command matches the runs behind it. The settings table:
n, accuracy [Wilson 95%], call ratio [bootstrap 95%], APGR (the share of the student→teacher gap recovered)
[paired bootstrap 95%]. The comparisons table: A − B in accuracy points on the problems both ran, its 95%
interval, the discordant counts, the exact McNemar p and whether the interval excludes zero (a *lead*).
``--calls``: where a relay setting's calls went, by what the student and the teacher alone do on each problem
(a problem *calls* when the teacher wrote some of its answer). A setting missing from the results is listed
as missing, not skipped silently, and one run on fewer problems than the others shows "n of N", so a partial
run says so.

``--readme README.md`` regenerates every table block of a Markdown file in place: a block is the text between
``<!-- report ARGS -->`` and ``<!-- /report -->``, where ARGS are this script's own arguments (``--pair ...
--benchmark ... --settings ...``), so the file says how each table was made and one command remakes them all.
``--check`` changes nothing and exits 1 when a block differs from what the store now says (a test runs it on
the README, so committed rows and the README's tables cannot drift apart).
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _ci(lo: float, hi: float, digits: int = 1) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (lo, hi)):
        return ""
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def _cell(value: str, interval: str) -> str:
    return f"{value} {interval}" if interval else value


def settings_table(summary, settings: list[str]) -> list[str]:
    from relay_demo.results.paired import keys

    named = keys(summary)  # "relay@0", as store compare names a setting
    full = int(summary["n"].max()) if len(summary) else 0  # the most problems a setting ran here
    lines = [
        "| setting | n | accuracy [95%] | call ratio [95%] | gap recovered (APGR) [95%] |",
        "|---|---:|---|---|---|",
    ]
    for s in settings:
        sel = summary[named == s]
        if sel.empty:
            lines.append(f"| {s} | – | not run yet | | |")
            continue
        r = sel.iloc[0]
        cells = [
            _cell(_pct(r["accuracy"]), _ci(r["acc_lo"], r["acc_hi"])),
            _cell(_pct(r["call_ratio"], 2), _ci(r["call_ratio_lo"], r["call_ratio_hi"], 2)),
            _cell(_pct(r["apgr"]), _ci(r["apgr_lo"], r["apgr_hi"])),
        ]
        n = int(r["n"])
        lines.append(f"| {s} | {n if n == full else f'{n} of {full}'} | " + " | ".join(cells) + " |")
    return lines


def compare_table(store, pair: str, benchmark: str, comparisons: list[str]) -> list[str]:
    lines = [
        "| A vs B | n | A − B (points) [95%] | A right only / B right only | McNemar p | lead? |",
        "|---|---:|---|---|---:|---|",
    ]
    for spec in comparisons:
        a, sep, b = spec.partition(":")
        if not sep or not a or not b:
            raise ValueError(f"--compare {spec!r}: expected A:B, e.g. relay@0:sft-only")
        try:
            c = store.compare(pair, benchmark, a, b)
        except ValueError as e:
            lines.append(f"| {a} vs {b} | – | not comparable yet: {str(e).split(';')[0]} | | | |")
            continue
        d = c.diff
        lo, hi = d.accuracy_ci
        lead = "yes" if lo > 0 else ("B leads" if hi < 0 else "no (within noise)")
        lines.append(
            f"| {a} vs {b} | {d.mcnemar.n} | {100 * d.accuracy:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"| {d.mcnemar.a_only} / {d.mcnemar.b_only} | {d.mcnemar.p:.2g} | {lead} |"
        )
    return lines


# a problem's class by what the student and the teacher alone do on it: (student right, teacher right)
CLASSES = {(False, True): "teacher only", (False, False): "both fail", (True, True): "both solve",
           (True, False): "student only"}  # fmt: skip


def calls_table(rows, settings: list[str]) -> list[str]:
    """Per setting and problem class: its problems that call, of the class's, and how many it solves.
    ``rows``: ``Store.setting_rows`` of one pair and benchmark (the student's and teacher's rows in them)."""
    from relay_demo.results.paired import keys

    named = keys(rows)

    def right(k: str):  # per problem: does setting k solve it
        return rows[named == k].groupby("problem_id")["correct"].mean() >= 0.5

    s_ok, t_ok = right("student"), right("teacher")
    if s_ok.empty or t_ok.empty:
        raise ValueError("--calls needs the student's and the teacher's rows")
    alone = s_ok.to_frame("s").join(t_ok.rename("t"), how="inner")
    lines = [
        "| setting | problems calling | "
        + " | ".join(f"{name}: calling / of them · solved" for name in CLASSES.values())
        + " |",
        "|---|---|" + "---|" * len(CLASSES),
    ]
    for s in settings:
        sel = rows[named == s].groupby("problem_id")[["teacher_tokens", "correct"]].mean()
        sel = sel.join(alone, how="inner")
        if sel.empty:
            lines.append(f"| {s} | not run yet |" + " |" * len(CLASSES))
            continue
        sel["calling"] = sel["teacher_tokens"] > 0
        cells = []
        for s_right, t_right in CLASSES:
            c = sel[(sel["s"] == s_right) & (sel["t"] == t_right)]
            cells.append(f"{int(c['calling'].sum())} / {len(c)} · {round(c['correct'].sum())}")
        lines.append(f"| {s} | {int(sel['calling'].sum())} of {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", help='as the store names it, e.g. "<pair> · float32"')
    ap.add_argument("--benchmark")
    ap.add_argument("--settings", nargs="+", default=[], metavar="METHOD[@PARAM]")
    ap.add_argument("--compare", nargs="*", default=[], metavar="A:B")
    ap.add_argument("--calls", nargs="*", default=[], metavar="METHOD[@PARAM]", help="where their calls went")
    ap.add_argument("--results", help="results folder (default: the repository's)")
    ap.add_argument("--readme", metavar="FILE", help="regenerate the FILE's <!-- report ARGS --> blocks")
    ap.add_argument("--check", action="store_true", help="with --readme: change nothing, exit 1 if stale")
    return ap


def tables(store, args: argparse.Namespace) -> list[str]:
    """The Markdown lines for one set of arguments (ValueError: a pair, comparison or class missing)."""
    if not args.pair or not args.benchmark or not args.settings:
        raise ValueError("--pair, --benchmark and --settings are required")
    if args.pair not in store.pairs():
        raise ValueError(f"no pair {args.pair!r}; pairs: {', '.join(store.pairs())}")
    out = settings_table(store.summary(args.pair, args.benchmark, exact=True), args.settings)
    if args.compare:
        out += ["", *compare_table(store, args.pair, args.benchmark, args.compare)]
    if args.calls:
        out += ["", *calls_table(store.setting_rows(args.pair, args.benchmark), args.calls)]
    return out


BLOCK = re.compile(r"(?P<open><!-- report (?P<args>.*?) -->\n)(?P<body>.*?)(?P<close><!-- /report -->)", re.S)


def regenerate(text: str, store) -> tuple[str, list[str]]:
    """``text`` with each block's body remade from the store, and the ARGS of the blocks that changed."""
    blocks = len(BLOCK.findall(text))
    if not blocks or text.count("<!-- report ") != blocks or text.count("<!-- /report -->") != blocks:
        raise ValueError("every <!-- report ARGS --> line needs its own <!-- /report --> after it")
    changed: list[str] = []

    def remake(m: re.Match) -> str:
        args = _parser().parse_args(shlex.split(m["args"]))
        if args.readme or args.results:
            raise ValueError(f"a report block names its tables only, not --readme/--results: {m['args']!r}")
        body = "\n" + "\n".join(tables(store, args)) + "\n\n"  # blank lines: Markdown sees tables
        if body != m["body"]:
            changed.append(m["args"])
        return m["open"] + body + m["close"]

    return BLOCK.sub(remake, text), changed


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.check and not args.readme:
        ap.error("--check goes with --readme FILE")
    if args.readme and (args.pair or args.benchmark or args.settings or args.compare or args.calls):
        ap.error("--readme FILE takes each table's arguments from its blocks, not from the command line")

    from relay_demo import store as st

    store = st.Store(args.results or st.DEFAULT_RESULTS)
    try:
        if args.readme:
            path = Path(args.readme)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read {path}: {e}") from None
            new, changed = regenerate(text, store)
            for block in changed:
                print(f"{'stale' if args.check else 'remade'}: {block}")
            if args.check:
                return 1 if changed else 0
            if changed:
                path.write_text(new, encoding="utf-8")
            return 0
        out = tables(store, args)
    except ValueError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
