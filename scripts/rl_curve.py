"""Draw the RL stage's dev learning curve (offline/rl_relay.py's ``curve`` and ``metrics``) as plotly HTML and
a PNG for the README, with the student's and the teacher's dev accuracy alone from the committed dev run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/rl_curve.py        # the real pair's files, the defaults below
    .venv/bin/python scripts/rl_curve.py --curve .../rl-run3/rl-dev.jsonl --call-bias 0     # another run's
    .venv/bin/python scripts/rl_curve.py --curve /tmp/rl-dev.jsonl --rounds /tmp/rl.jsonl --out /tmp/rl-curve

Writes ``<out>.html`` (plotly.js from its CDN, so the file stays small) and ``<out>.png``: the same figure
with plotly.js inlined, rendered by Debian's headless chromium through Playwright (requirements-dev.txt;
``--no-png`` skips it: plotly's own ``write_image`` would need kaleido, which the project does not install).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import yaml  # noqa: E402

from relay_demo.charts import learning_curve  # noqa: E402
from relay_demo.results.parts import read_samples  # noqa: E402

TRAINING = "results/training/qwen2.5-coder-0.5b-1.5b"
WIDTH = 1100
CHROMIUM = "/usr/bin/chromium"


def alone(dev_run: str) -> dict[str, float]:
    """Dev accuracy of the student alone and of the teacher alone, from the dev run's rows (those present)."""
    rows = read_samples(dev_run)
    out = {}
    for method in ("student", "teacher"):
        mine = rows[rows["method"] == method]
        if len(mine):
            out[method] = float(mine["correct"].mean())
        else:
            print(f"note: {dev_run} has no {method} rows; no '{method} alone' line", file=sys.stderr)
    return out


def screenshot(fig, png: Path) -> None:
    """Render the figure in Debian's headless chromium through Playwright (plotly.js inlined: the CDN may be
    unreachable) and save the plot element, at twice the pixels so that it stays sharp in the README."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_file = Path(tmp) / "figure.html"
        fig = go.Figure(fig).update_layout(width=WIDTH)  # the HTML itself keeps the page's width
        fig.write_html(page_file, include_plotlyjs=True, config={"displayModeBar": False, "staticPlot": True})
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            height = int(fig.layout.height) + 40
            page = browser.new_page(viewport={"width": WIDTH + 40, "height": height}, device_scale_factor=2)
            page.goto(page_file.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
            page.locator(".plotly-graph-div").screenshot(path=str(png))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve", default=f"{TRAINING}/rl-dev.jsonl", help="dev points, one row each")
    ap.add_argument("--rounds", default=f"{TRAINING}/rl.jsonl", help="per-round metrics ('' to leave out)")
    ap.add_argument("--dev-run", default="results/runs/qwen2.5-coder-0.5b-1.5b-dev")
    ap.add_argument(
        "--dev", default="held-out GSM8K train problems", help="what the dev set is, for the title"
    )
    ap.add_argument("--pair", default="Qwen2.5-Coder 0.5B → 1.5B")
    ap.add_argument("--out", default=f"{TRAINING}/rl-curve", help="path without suffix: .html and .png")
    ap.add_argument("--call-bias", type=float, default=None, help="the points drawn (default: the recipe's)")
    ap.add_argument("--recipe", default="offline/recipes/qwen2.5-coder-0.5b-1.5b/rl.yaml")
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)

    curve = pd.read_json(args.curve, lines=True)
    rounds = pd.read_json(args.rounds, lines=True) if args.rounds and Path(args.rounds).is_file() else None
    ref = alone(args.dev_run)
    n = ", ".join(str(v) for v in sorted(set(curve["n"])))
    title = (
        f"RL stage of the relay, {args.pair}: learning curve on dev<br><sup>dev: {n} {args.dev}, greedy; "
        f"error bars: 95% Wilson intervals</sup>"
    )
    bias = args.call_bias
    if bias is None:  # the run's own bias: its dev points are measured there (run 4: +1)
        recipe = yaml.safe_load(Path(args.recipe).read_text()) if Path(args.recipe).is_file() else {}
        bias = float(recipe.get("call_bias", 0.0))
    fig = learning_curve(
        curve, rounds, student=ref.get("student"), teacher=ref.get("teacher"), title=title, call_bias=bias
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    print(out.with_suffix(".html"))
    if not args.no_png:
        screenshot(fig, out.with_suffix(".png"))
        print(out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
