"""DuckDB over ``results/``: every run's samples as one view, and the summary the charts and the README need.

    python -m relay_demo.store summary [--pair P] [--benchmark B] [--json] [--mean] [--results DIR]

Views (in an in-memory DuckDB; the parquet files are only read):

* ``all_samples``: every live row of every run (``results/runs/<run_id>/samples.parquet``, see
  ``relay_demo/results/parts.py``); rows of a split other than test are their own benchmark
  (``gsm8k-train``: a dev run is never mixed into the test split's points). A part that is corrupt or foreign
  (not parquet, or lacking the schema's columns) is reported by name in a warning and skipped; the rest still
  loads.
* ``samples``: one row per (pair, method, param, benchmark, problem): where several runs evaluated the same
  thing (a rerun, another backend), the most recently created run's row. Points never count a problem twice.
* ``runs``: one row per run manifest (run_id, pair, created_at, finished_at, git commit).
* ``points``: one row per (pair, benchmark, method, param): n, accuracy, call ratio, mean FLOPs, tokens,
  calls.

:meth:`Store.summary` adds what SQL does not say well (``relay_demo.results.metrics``): APGR against the
pair's student and teacher on the same benchmark, CPT(50%) / CPT(80%) of each method's curve, the saving
against the accuracy-matched random-query router, and the simulated band of the random-query rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .results import metrics
from .results.manifest import MANIFEST, read_manifest
from .results.parts import REQUIRED, SAMPLES, SCHEMA, scan_parts

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"
METHOD_ORDER = (
    "student",
    "teacher",
    "relay",
    "relay-teacher-free",
    "relay-call-bias",
    "random-query",
    "random-token",
    "confidence",
    "router",
)  # tables and legends list methods in this order, others after them
MEAN = "mean"  # the benchmark name of rows averaged over a pair's benchmarks (the paper reports such means)
NO_SAVING = ("student", "teacher", "random-query")
SUMMARY_COLUMNS = [
    "pair",
    "benchmark",
    "method",
    "param",
    "n",
    "accuracy",
    "call_ratio",
    "flops",
    "apgr",
    "cpt50",
    "cpt80",
    "p_star",
    "saving_call",
    "saving_query",
    "saving_flops",
    "acc_lo",
    "acc_hi",
    "tokens",
    "calls",
    "wall_s",
]

# Problems of a split other than test carry it in their id ("gsm8k-train/19"; the test split's: "gsm8k/19"):
# such rows are the benchmark "gsm8k-train", so a dev run on held-out train problems is never averaged with
# the test split's rows of the same pair (nor its APGR computed against the test split's student and teacher).
BENCHMARK_SQL = """CASE WHEN strpos(problem_id, '/') > 0 AND starts_with(problem_id, benchmark || '-')
    THEN split_part(problem_id, '/', 1) ELSE benchmark END AS benchmark"""

# One row per (pair, method, param, benchmark, problem): when several runs hold it, the latest run's.
SAMPLES_SQL = """
CREATE VIEW samples AS
SELECT s.* FROM all_samples s LEFT JOIN runs r USING (run_id)
WHERE s.correct BETWEEN 0 AND 1 AND isfinite(s.correct)  -- ungraded rows are left out (and reported), not 0s
QUALIFY row_number() OVER (PARTITION BY s.pair, s.method, s.param, s.benchmark, s.problem_id
                           ORDER BY r.created_at DESC NULLS LAST, s.run_id DESC) = 1
"""

UNGRADED_SQL = """SELECT run_id, count(*) FROM all_samples
WHERE correct IS NULL OR NOT isfinite(correct) OR correct < 0 OR correct > 1 GROUP BY run_id"""

POINTS_SQL = """
CREATE OR REPLACE VIEW points AS
SELECT pair, benchmark, method, param,
       COUNT(*) AS n,
       AVG(correct) AS accuracy,
       COALESCE(SUM(teacher_tokens) / NULLIF(SUM(student_tokens + teacher_tokens + command_tokens), 0), 0)
           AS call_ratio,
       AVG(flops) AS flops,
       AVG(student_tokens + teacher_tokens + command_tokens) AS tokens,
       AVG(calls) AS calls,
       AVG(wall_s) AS wall_s
FROM samples
GROUP BY pair, benchmark, method, param
"""

PER_PROBLEM_SQL = """
SELECT problem_id, AVG(correct) AS correct,
       AVG(student_tokens + teacher_tokens + command_tokens) AS tokens,
       AVG(teacher_tokens) AS teacher_tokens, AVG(flops) AS flops
FROM samples
WHERE pair = ? AND benchmark = ? AND method = ? AND param IS NULL
GROUP BY problem_id ORDER BY problem_id
"""


def _check_part(path: Path) -> str | None:
    """Why ``path`` cannot be loaded, or None when it can (read whole: a bad page must not break a query)."""
    try:
        schema = pq.read_schema(path)
        missing = [c for c in REQUIRED if c not in schema.names]
        if missing:
            return f"not a results file: missing columns {missing}"
        wrong = [
            f"{c} is {schema.field(c).type}" for c in REQUIRED if schema.field(c).type != SCHEMA.field(c).type
        ]
        if wrong:
            return f"not a results file: {', '.join(wrong)}"
        pq.read_table(path, columns=list(REQUIRED))
    except Exception as e:  # noqa: BLE001 - any failure to read means: skip it and say so
        return f"{type(e).__name__}: {e}"
    return None


def _foreign(run_dir: Path, known: set[Path]) -> list[Path]:
    """Parquet files beside the run's parts, and any other visible file among them: data we would not read."""
    samples = run_dir / SAMPLES
    stray = [p for p in run_dir.glob("*.parquet") if p != samples]
    if samples.is_dir():
        stray += [p for p in samples.iterdir() if not p.name.startswith(".") and p not in known]
    return sorted(stray)


class Store:
    """Read-only DuckDB views over a results folder. ``skipped`` lists (file, reason) of what was left out."""

    def __init__(self, results_dir: str | Path = DEFAULT_RESULTS):
        self.results_dir = Path(results_dir)
        self.con = duckdb.connect(":memory:")
        self.skipped: list[tuple[Path, str]] = []
        self.files: list[Path] = []
        self.manifests: list[dict] = []
        self._discover()
        self._create_views()

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))
        warnings.warn(f"skipping {path}: {why}", stacklevel=3)

    def _discover(self) -> None:
        runs = self.results_dir / "runs"
        for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
            live, dead, bad = scan_parts(run_dir)
            for path, why in bad:
                self._skip(path, why)
            for path in _foreign(run_dir, {*live, *dead, *(p for p, _ in bad)}):
                self._skip(path, "foreign file: not a part written by relay_demo/results/parts.py")
            for path in live:
                why = _check_part(path)
                self._skip(path, why) if why else self.files.append(path)
            try:
                self.manifests.append(read_manifest(run_dir))
            except (OSError, ValueError) as e:
                if live:
                    self._skip(run_dir / MANIFEST, f"{type(e).__name__}: {e}")

    def _create_views(self) -> None:
        if self.files:
            # foreign extra columns are ignored; rows of a non-test split are a benchmark of their own
            cols = ", ".join(BENCHMARK_SQL if c == "benchmark" else f'"{c}"' for c in REQUIRED)
            files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in self.files) + "]"
            self.con.execute(
                f"CREATE VIEW all_samples AS SELECT {cols} FROM read_parquet({files}, union_by_name=true)"
            )
        else:
            self.con.register("no_samples", SCHEMA.empty_table())
            self.con.execute("CREATE VIEW all_samples AS SELECT * FROM no_samples")
        runs = pd.DataFrame(
            [
                {
                    "run_id": m.get("run_id"),
                    "pair": (m.get("config") or {}).get("pair"),
                    "created_at": m.get("created_at"),
                    "finished_at": m.get("finished_at"),
                    "commit": (m.get("git") or {}).get("commit"),
                }
                for m in self.manifests
            ],
            columns=["run_id", "pair", "created_at", "finished_at", "commit"],
        )
        self.con.register("runs_df", runs)
        self.con.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
        self.con.execute(SAMPLES_SQL)
        self.con.execute(POINTS_SQL)
        for run_id, n in self.con.execute(UNGRADED_SQL).fetchall():
            self._skip(self.results_dir / "runs" / str(run_id), f"{n} rows without a valid grade: left out")

    # ------------------------------------------------------------ queries

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def samples(self, pair: str | None = None, benchmark: str | None = None) -> pd.DataFrame:
        where, params = _filters(pair, benchmark)
        return self.query(f"SELECT * FROM samples {where}", params)

    def points(self, pair: str | None = None, benchmark: str | None = None) -> pd.DataFrame:
        where, params = _filters(pair, benchmark)
        return self.query(
            f"SELECT * FROM points {where} ORDER BY pair, benchmark, method, param NULLS FIRST", params
        )

    def runs(self) -> pd.DataFrame:
        return self.query("SELECT * FROM runs ORDER BY created_at")

    def pairs(self) -> list[str]:
        return self.query("SELECT DISTINCT pair FROM samples ORDER BY pair")["pair"].tolist()

    def benchmarks(self, pair: str | None = None) -> list[str]:
        where, params = _filters(pair, None)
        return self.query(f"SELECT DISTINCT benchmark FROM samples {where} ORDER BY benchmark", params)[
            "benchmark"
        ].tolist()

    def side(self, pair: str, benchmark: str, method: str) -> metrics.Side | None:
        """Per-problem results of ``student`` or ``teacher`` (None when that run is missing)."""
        df = self.query(PER_PROBLEM_SQL, [pair, benchmark, method])
        if df.empty:
            return None
        return metrics.Side.of(df["correct"], df["tokens"], df["teacher_tokens"], df["flops"])

    def summary(
        self,
        pair: str | None = None,
        benchmark: str | None = None,
        *,
        n_seeds: int = 1000,
        mean: bool = False,
    ) -> pd.DataFrame:
        """The points with APGR, CPT, saving vs the matched random-query router and the random-query band.

        ``mean``: also rows with benchmark ``"mean"`` per pair (see :func:`mean_rows`).
        """
        pts = self.points(pair, benchmark)
        out = []
        for (p, b), group in pts.groupby(["pair", "benchmark"], sort=True):
            out.append(_enrich(group.copy(), self.side(p, b, "student"), self.side(p, b, "teacher"), n_seeds))
        if not out:
            return pd.DataFrame(columns=SUMMARY_COLUMNS)
        df = pd.concat(out, ignore_index=True)[SUMMARY_COLUMNS]
        if mean:
            df = pd.concat([df, *[mean_rows(g) for _, g in df.groupby("pair")]], ignore_index=True)
        return _ordered(df)


def _filters(pair: str | None, benchmark: str | None) -> tuple[str, list]:
    conds, params = [], []
    for col, val in (("pair", pair), ("benchmark", benchmark)):
        if val is not None:
            conds.append(f"{col} = ?")
            params.append(val)
    return ("WHERE " + " AND ".join(conds) if conds else ""), params


def _aligned(student: metrics.Side | None, teacher: metrics.Side | None) -> bool:
    return student is not None and teacher is not None and student.correct.size == teacher.correct.size


def _enrich(group: pd.DataFrame, student, teacher, n_seeds: int) -> pd.DataFrame:
    for col in SUMMARY_COLUMNS:
        if col not in group:
            group[col] = np.nan
    if not _aligned(student, teacher):
        return group  # no APGR without both baselines on the same problems
    acc_s, acc_t = student.accuracy, teacher.accuracy
    group["apgr"] = [metrics.apgr(a, acc_s, acc_t) for a in group["accuracy"]]
    for _, rows in group.groupby("method"):
        curve = list(zip(rows["call_ratio"], rows["accuracy"], strict=True))
        for x, col in ((0.5, "cpt50"), (0.8, "cpt80")):
            value = metrics.cpt(curve, acc_s, acc_t, x)
            group.loc[rows.index, col] = np.nan if value is None else value
    for i, row in group.iterrows():
        if row["method"] == "random-query" and not pd.isna(row["param"]):
            sim = metrics.simulate_random_query(student, teacher, float(row["param"]), n_seeds=n_seeds)
            group.loc[i, ["acc_lo", "acc_hi"]] = [sim.lo, sim.hi]
        elif row["method"] not in NO_SAVING:
            s = metrics.saving_vs_random(row["accuracy"], row["call_ratio"], row["flops"], student, teacher)
            group.loc[i, ["p_star", "saving_call", "saving_query", "saving_flops"]] = [
                np.nan if v is None else v for v in (s.p_star, s.saving_call, s.saving_query, s.saving_flops)
            ]
    return group


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    key = df["method"].map(lambda m: rank.get(m, len(rank)))
    order = ["pair", "benchmark", "_rank", "method", "param"]
    df = df.assign(_rank=key).sort_values(order, na_position="first")
    return df.drop(columns="_rank").reset_index(drop=True)


def mean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Unweighted means over one pair's benchmarks, as the paper reports: one row per (method, param) present
    on every benchmark. APGR, CPT and the paper's saving (``1 - call_ratio / p*``) are recomputed from the
    means; the per-token and FLOPs savings need per-problem data and are left empty."""
    benches = df["benchmark"].nunique()
    if benches < 2:
        return pd.DataFrame(columns=df.columns)
    cols = ["accuracy", "call_ratio", "flops", "tokens", "calls", "wall_s"]
    grouped = df.groupby(["method", "param"], dropna=False)
    m = grouped[cols].mean().join(grouped["n"].sum())
    m = m.join(grouped["benchmark"].nunique().rename("b")).reset_index()
    m = m[m["b"] == benches].drop(columns="b").assign(pair=df["pair"].iloc[0], benchmark=MEAN)
    for col in SUMMARY_COLUMNS:
        if col not in m:
            m[col] = np.nan
    base = {k: m.loc[m["method"].eq(k) & m["param"].isna(), "accuracy"] for k in ("student", "teacher")}
    if base["student"].empty or base["teacher"].empty:
        return m[SUMMARY_COLUMNS]
    acc_s, acc_t = float(base["student"].iloc[0]), float(base["teacher"].iloc[0])
    m["apgr"] = [metrics.apgr(a, acc_s, acc_t) for a in m["accuracy"]]
    for _, rows in m.groupby("method"):
        curve = list(zip(rows["call_ratio"], rows["accuracy"], strict=True))
        for x, col in ((0.5, "cpt50"), (0.8, "cpt80")):
            value = metrics.cpt(curve, acc_s, acc_t, x)
            m.loc[rows.index, col] = np.nan if value is None else value
    for i, row in m[~m["method"].isin(NO_SAVING)].iterrows():
        p = metrics.matched_p(row["accuracy"], acc_s, acc_t)
        m.loc[i, "p_star"] = np.nan if p is None else p
        s = metrics.paper_saving(row["accuracy"], row["call_ratio"], acc_s, acc_t)
        m.loc[i, "saving_query"] = np.nan if s is None else s
    return m[SUMMARY_COLUMNS]


# ---------------------------------------------------------------- CLI


def _jsonable(value):
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return "no results"
    pct = ["accuracy", "call_ratio", "apgr", "cpt50", "cpt80", "saving_call", "saving_query"]
    shown = df[SUMMARY_COLUMNS[: SUMMARY_COLUMNS.index("p_star")] + pct[-2:]].copy()
    for col in pct:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    shown["flops"] = shown["flops"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    shown["param"] = shown["param"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    return shown.to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_demo.store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="accuracy, call ratio, FLOPs, APGR, CPT and saving per method setting")
    s.add_argument("--pair")
    s.add_argument("--benchmark")
    s.add_argument("--json", action="store_true", help="print a JSON list of rows")
    s.add_argument("--mean", action="store_true", help="add rows averaged over each pair's benchmarks")
    s.add_argument("--results", default=str(DEFAULT_RESULTS), help="results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        parser.exit(2, f"{parser.prog}: error: --results {args.results}: no such folder\n")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        df = Store(args.results).summary(args.pair, args.benchmark, mean=args.mean)
    if args.json:
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
        print(json.dumps(rows, indent=1))
    else:
        print(_table(df))
    return 0


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`summary --json | head`): not an error worth a traceback; point stdout at
        # /dev/null so that the interpreter's own flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # what a shell reports for a process ended by SIGPIPE
    sys.exit(code)
