"""DuckDB over ``results/``: every run's samples as one view, and the summary the charts and the README need.

    python -m relay_demo.store summary [--pair P] [--benchmark B] [--json] [--mean] [--results DIR]
    python -m relay_demo.store compare --pair P --benchmark B METHOD[@PARAM] METHOD[@PARAM] [--json]

Views (in an in-memory DuckDB; the parquet files are only read):

* ``all_samples``: every live row of every run (``results/runs/<run_id>/samples.parquet``, see
  ``relay_demo/results/parts.py``); rows of a split other than test are their own benchmark
  (``gsm8k-train``: a dev run is never mixed into the test split's points). A part that is corrupt or foreign
  (not parquet, or lacking the schema's columns) is reported by name in a warning and skipped; the rest still
  loads.
* ``samples``: one row per (pair, method, param, benchmark, problem): where several runs evaluated the same
  thing (a rerun, another backend), the most recently created run's row. Points never count a problem twice.
  A pair evaluated in two dtypes (runs refuse a second one: greedy decodes differ) is two pairs here,
  ``"<pair> · <dtype>"``; ``--pair <pair>`` selects both.
* ``runs``: one row per run manifest (run_id, pair, created_at, finished_at, git commit, the rows' dtype).
* ``points``: one row per (pair, benchmark, method, param): n, accuracy, call ratio, mean FLOPs and its
  split (``relay_demo/cost.py``; null where a run predates it), tokens, calls, wall time, and the cost against
  the teacher alone on the same problems of the same run (its ``teacher`` rows): all FLOPs, decode FLOPs
  (student + teacher-written tokens) and the teacher's prefill, each a ratio of sums over the problems both
  have, and the wall time likewise. A row's ``wall_s`` sums the whole durations of the batch runs it took
  part in (each to its slowest row's end, the last to its own end; ``parts.SCHEMA``), not its share of the
  batch's time, so wall ratios compare methods run at the same batch size.

:meth:`Store.summary` adds what SQL does not say well (``relay_demo.results.summary``): APGR against the
pair's student and teacher on the same benchmark, CPT(50%) / CPT(80%) of each method's curve, the saving
against the accuracy-matched random-query router, the simulated band of the random-query rows, and 95%
intervals (``relay_demo.stats``): accuracy by Wilson, call ratio and APGR by a paired bootstrap over
problems; and ``wall_mixed``, true where a run behind the row was written under several git commits (its
sessions'), so that its wall ratio may compare two versions of the loop (the CLI's table marks it with ``*``).
:meth:`Store.compare` sets two settings side by side on the problems both ran
(``relay_demo.results.paired``) and refuses rows that are not on the same problems.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from .results import metrics, paired, summary
from .results.manifest import MANIFEST, read_manifest, run_dtypes
from .results.parts import REQUIRED, SAMPLES, SCHEMA, scan_parts
from .results.summary import MEAN as MEAN  # the explorer's and the tests' name for the averaged rows
from .results.summary import SUMMARY_COLUMNS, mean_rows
from .results.views import (
    BENCHMARK_SQL,
    DTYPE_SEP,
    MIXED_SQL,
    PER_PROBLEM_SQL,
    POINTS_SQL,
    SAMPLES_SQL,
    SETTING_ROWS_SQL,
    UNGRADED_SQL,
)

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"


def _n_commits(manifest: dict) -> int:
    """How many git commits wrote the run: each session (a start or resume of the job) records its own."""
    commits = {(x.get("git") or {}).get("commit") for x in manifest.get("sessions") or []}
    return len(commits - {None}) or 1


def _check_part(path: Path) -> tuple[str | None, list[str]]:
    """Why ``path`` cannot be loaded (None when it can; read whole: a bad page must not break a query), and
    the columns it has."""
    try:
        schema = pq.read_schema(path)
        missing = [c for c in REQUIRED if c not in schema.names]
        if missing:
            return f"not a results file: missing columns {missing}", []
        present = [c for c in SCHEMA.names if c in schema.names]  # an ADDED column may be absent (null)
        wrong = [
            f"{c} is {schema.field(c).type}" for c in present if schema.field(c).type != SCHEMA.field(c).type
        ]
        if wrong:
            return f"not a results file: {', '.join(wrong)}", []
        pq.read_table(path, columns=list(REQUIRED))
    except Exception as e:  # noqa: BLE001 - any failure to read means: skip it and say so
        return f"{type(e).__name__}: {e}", []
    return None, schema.names


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
        self.columns: set[str] = set()  # every column some loaded part has
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
                why, columns = _check_part(path)
                if why:
                    self._skip(path, why)
                else:
                    self.files.append(path)
                    self.columns.update(columns)
            try:
                self.manifests.append(read_manifest(run_dir))
            except (OSError, ValueError) as e:
                if live:
                    self._skip(run_dir / MANIFEST, f"{type(e).__name__}: {e}")

    def _create_views(self) -> None:
        if self.files:
            # foreign extra columns are ignored; a column no part has yet (parts.ADDED, float64) is null;
            # rows of a non-test split are a benchmark of their own (BENCHMARK_SQL)
            def col(c: str) -> str:
                if c == "benchmark":
                    return BENCHMARK_SQL
                return f'"{c}"' if c in self.columns else f'NULL::DOUBLE AS "{c}"'

            cols = ", ".join(col(c) for c in SCHEMA.names)
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
                    "n_commits": _n_commits(m),
                    "dtype": "+".join(sorted(run_dtypes(m))) or None,
                }
                for m in self.manifests
            ],
            columns=["run_id", "pair", "created_at", "finished_at", "commit", "n_commits", "dtype"],
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

    def points(
        self, pair: str | None = None, benchmark: str | None = None, *, exact: bool = False
    ) -> pd.DataFrame:
        """``exact``: only the rows named ``pair`` (a bare name otherwise selects each dtype's too)."""
        where, params = _filters(pair, benchmark, exact)
        return self.query(
            f"SELECT * FROM points {where} ORDER BY pair, benchmark, method, param NULLS FIRST", params
        )

    def runs(self) -> pd.DataFrame:
        return self.query("SELECT * FROM runs ORDER BY created_at")

    def run_ids(self, pair: str) -> list[str]:
        """The runs whose rows the store shows under exactly ``pair``, oldest first (a ``<pair> · <dtype>``
        name is no manifest's pair)."""
        sql = """SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM samples WHERE pair = ?)
                 ORDER BY created_at"""
        return self.query(sql, [pair])["run_id"].tolist()

    def pairs(self) -> list[str]:
        return self.query("SELECT DISTINCT pair FROM samples ORDER BY pair")["pair"].tolist()

    def benchmarks(self, pair: str | None = None, *, exact: bool = False) -> list[str]:
        """``exact``: as :meth:`points`."""
        where, params = _filters(pair, None, exact)
        return self.query(f"SELECT DISTINCT benchmark FROM samples {where} ORDER BY benchmark", params)[
            "benchmark"
        ].tolist()

    def side(self, pair: str, benchmark: str, method: str) -> metrics.Side | None:
        """Per-problem results of ``student`` or ``teacher`` (None when that run is missing)."""
        df = self.query(PER_PROBLEM_SQL, [pair, benchmark, method])
        if df.empty:
            return None
        return metrics.Side.of(df["correct"], df["tokens"], df["teacher_tokens"], df["flops"])

    def setting_rows(self, pair: str, benchmark: str) -> pd.DataFrame:
        """Every setting's per-problem rows of one benchmark (what intervals and comparisons resample)."""
        return self.query(SETTING_ROWS_SQL, [pair, benchmark])

    def compare(self, pair: str, benchmark: str, a: str, b: str) -> paired.Comparison:
        """Settings ``a`` and ``b`` (``METHOD[@PARAM]``) compared on the problems both ran; ValueError
        saying why when they cannot be (see :func:`relay_demo.results.paired.compare`)."""
        if pair not in self.pairs():
            split = [p for p in self.pairs() if p.startswith(pair + DTYPE_SEP)]
            if split:
                raise ValueError(
                    f"pair {pair} has results in several dtypes, compared only within one: {', '.join(split)}"
                )
            raise ValueError(f"no results for pair {pair!r}; pairs: {', '.join(self.pairs()) or 'none'}")
        if benchmark not in self.benchmarks(pair):
            known = ", ".join(self.benchmarks(pair))
            raise ValueError(f"pair {pair} has no benchmark {benchmark!r}; benchmarks: {known}")
        return paired.compare(self.setting_rows(pair, benchmark), a, b, where=f"{pair} · {benchmark}")

    def summary(
        self,
        pair: str | None = None,
        benchmark: str | None = None,
        *,
        n_seeds: int = 1000,
        mean: bool = False,
        exact: bool = False,
    ) -> pd.DataFrame:
        """The points with APGR, CPT, saving vs the matched random-query router and the random-query band.

        ``mean``: also rows with benchmark ``"mean"`` per pair (see :func:`mean_rows`); ``exact``: as
        :meth:`points`.
        """
        pts = self.points(pair, benchmark, exact=exact)
        out = []
        for (p, b), group in pts.groupby(["pair", "benchmark"], sort=True):
            student, teacher = self.side(p, b, "student"), self.side(p, b, "teacher")
            rows = self.setting_rows(p, b)
            out.append(summary.enrich(group.copy(), student, teacher, n_seeds, rows))
        if not out:
            return pd.DataFrame(columns=[*SUMMARY_COLUMNS, "wall_mixed"])
        df = pd.concat(out, ignore_index=True)[SUMMARY_COLUMNS]
        if mean:
            df = pd.concat([df, *[mean_rows(g) for _, g in df.groupby("pair")]], ignore_index=True)
        return self._flag_mixed_code(summary.ordered(df))

    def _flag_mixed_code(self, df: pd.DataFrame) -> pd.DataFrame:
        """``wall_mixed``: a run behind the row was written under several commits (resumed or redone after a
        code change), so its wall time and its teacher's may be of different loops (rows do not say which
        session wrote them: the whole run is flagged)."""
        mixed = self.query(MIXED_SQL)
        key = ["pair", "method", "param"]
        means = mixed.groupby(key, dropna=False)["wall_mixed"].any().reset_index().assign(benchmark=MEAN)
        flags = pd.concat([mixed, means], ignore_index=True)
        df = df.merge(flags, on=[*key, "benchmark"], how="left")
        return df.assign(wall_mixed=df["wall_mixed"].eq(True))


def _filters(pair: str | None, benchmark: str | None, exact: bool = False) -> tuple[str, list]:
    """A pair's name also selects its rows of each dtype ("<pair> · <dtype>", see SAMPLES_SQL), unless
    ``exact``."""
    conds, params = [], []
    if pair is not None and exact:
        conds.append("pair = ?")
        params.append(pair)
    elif pair is not None:
        conds.append("(pair = ? OR starts_with(pair, ?))")
        params += [pair, pair + DTYPE_SEP]
    if benchmark is not None:
        conds.append("benchmark = ?")
        params.append(benchmark)
    return ("WHERE " + " AND ".join(conds) if conds else ""), params


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay_demo.store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "summary",
        help="accuracy, call ratio, FLOPs and wall time vs the teacher alone, APGR, CPT, saving per setting",
    )
    s.add_argument("--pair")
    s.add_argument("--benchmark")
    s.add_argument("--mean", action="store_true", help="add rows averaged over each pair's benchmarks")
    c = sub.add_parser(
        "compare",
        help="two settings on the problems both ran: accuracy and APGR differences with 95%% intervals, "
        "discordant counts, exact McNemar p, the smallest detectable difference",
    )
    c.add_argument("--pair", required=True)
    c.add_argument("--benchmark", required=True)
    c.add_argument("a", metavar="METHOD[@PARAM]", help="A, e.g. relay@1")
    c.add_argument("b", metavar="METHOD[@PARAM]", help="B, e.g. sft-only")
    for p in (s, c):
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument(
            "--results", default=str(DEFAULT_RESULTS), help="results folder (default: %(default)s)"
        )
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        parser.exit(2, f"{parser.prog}: error: --results {args.results}: no such folder\n")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        store = Store(args.results)
        why = summary.no_match(store.pairs(), store.benchmarks(args.pair), args.pair, args.benchmark)
        if why:
            parser.exit(2, f"{parser.prog}: error: {why}\n")
        if args.command == "compare":
            try:
                cmp = store.compare(args.pair, args.benchmark, args.a, args.b)
            except ValueError as e:
                parser.exit(2, f"{parser.prog} compare: error: {e}\n")
            text = paired.report(args.pair, args.benchmark, cmp)
            print(json.dumps(paired.as_json(cmp), indent=1) if args.json else text)
            return 0
        df = store.summary(args.pair, args.benchmark, mean=args.mean)
    if args.json:
        rows = [{k: summary.jsonable(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
        print(json.dumps(rows, indent=1))
    else:
        print(summary.table(df))
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
