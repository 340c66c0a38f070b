"""Results files of evaluation runs: ``results/runs/<run_id>/{manifest.json, samples.parquet/}``.

The schema, the atomic parts, the writer and the one reader (:func:`read_samples`); the manifest's helpers
are in :mod:`relay_demo.results.manifest`, the metrics in :mod:`relay_demo.results.metrics`.

``samples.parquet`` is a folder of parquet parts (the layout pyarrow and Spark call a dataset), one row per
(method, param, benchmark, problem) with the columns of :data:`SCHEMA` (DESIGN.md, "Results schema").

Why no row is ever lost or duplicated, whatever the moment a job is killed (SIGKILL included):

* A part is written under a temporary name, flushed to disk, then renamed (``os.replace`` is atomic): a part
  either exists whole or not at all. Leftover temporary files are deleted when the run is opened again.
* A resumed job reads the keys of every live part and skips them; rows still buffered in memory at the kill
  were never written and are simply produced again.
* Compaction writes one new part holding every live row, whose parquet metadata lists the parts it replaces
  (``relay.covers``), and only then deletes them. A part named in any live part's ``covers`` is dead: readers
  ignore it and the next writer deletes it. So a kill between the rename and the deletes changes nothing.
* One writer per run at a time (an exclusive ``flock``, released by the kernel when the process dies).

    w = open_run("results", "tiny-arith-eval", config={...})   # creates or resumes
    if not w.is_done("relay", None, "arith", "arith-test-0-0"): w.add([row, ...])
    w.close()                                                  # flush + compact + manifest finished_at
    df = read_samples("results/runs/tiny-arith-eval")
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .manifest import MANIFEST, environment, now, read_manifest, write_json_atomic

SAMPLES = "samples.parquet"
COVERS_KEY = b"relay.covers"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
KEY_COLUMNS = ("method", "param", "benchmark", "problem_id")

# Counts are float64: computed random-query rows hold per-problem expectations (a 0.3 chance of correct).
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pair", pa.string()),
        ("method", pa.string()),
        ("param", pa.float64()),  # the swept knob (threshold, p); null for methods without one
        ("benchmark", pa.string()),
        ("problem_id", pa.string()),
        ("correct", pa.float64()),  # 1.0 / 0.0, or an expectation for computed rows
        ("student_tokens", pa.float64()),
        ("teacher_tokens", pa.float64()),
        ("command_tokens", pa.float64()),
        ("calls", pa.float64()),
        ("flops", pa.float64()),
        # seconds of the model runs this row took part in: rows decode in batches, and every row of a run
        # counts the run's whole duration, to its slowest row's end (the run in which the row ended: to its
        # own end), not its share of it; a relay row leaves out the other model's runs, which it waits through
        ("wall_s", pa.float64()),
        ("response", pa.string()),
        ("spans", pa.string()),  # JSON list of {"source", "text", "tokens"}
        ("extracted", pa.string()),  # the answer the grader read, null when none
        ("finish_reason", pa.string()),
        # FLOPs split (relay_demo/cost.py), summing to flops; added later: null in runs written before
        ("flops_student", pa.float64()),
        ("flops_teacher_decode", pa.float64()),
        ("flops_teacher_prefill", pa.float64()),
    ]
)
ADDED = ("flops_student", "flops_teacher_decode", "flops_teacher_prefill")  # columns older parts may lack
REQUIRED = tuple(c for c in SCHEMA.names if c not in ADDED)


def param_key(param: float | None) -> str:
    """The canonical text of a param for keys: '' when there is none, else repr of the float."""
    if param is None or (isinstance(param, float) and math.isnan(param)):
        return ""
    return repr(float(param))


def row_key(row: dict) -> tuple[str, str, str, str]:
    return (str(row["method"]), param_key(row["param"]), str(row["benchmark"]), str(row["problem_id"]))


# ---------------------------------------------------------------- parts on disk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _covers(path: Path) -> list[str]:
    meta = pq.read_schema(path).metadata or {}
    covers = json.loads(meta.get(COVERS_KEY, b"[]"))
    if not isinstance(covers, list):
        raise TypeError(f"{COVERS_KEY.decode()} is not a list")
    return [str(c) for c in covers]


def _parts(samples_dir: Path) -> list[Path]:
    """Part files of a samples folder; only regular files (a FIFO of the same name would block a reader)."""
    if not samples_dir.is_dir():
        return []
    return sorted(p for p in samples_dir.iterdir() if _PART_RE.match(p.name) and p.is_file())


def _seq(path: Path) -> int:
    return int(_PART_RE.match(path.name).group(1))


def _keys(path: Path) -> set[tuple[str, str, str, str]]:
    return {row_key(k) for k in pq.read_table(path, columns=list(KEY_COLUMNS)).to_pylist()}


def _false_claim(part: Path, covered: str, on_disk: dict[str, Path]) -> str | None:
    """Why ``part`` may not replace ``covered``, or None when it may: a compacted part comes later than what
    it replaces and holds every one of its rows, so that honouring it can never hide a row."""
    m = _PART_RE.match(covered)
    if not m or int(m.group(1)) >= _seq(part):
        return f"claims to replace {covered!r}, which is not an earlier part"
    if covered in on_disk and not _keys(on_disk[covered]) <= _keys(part):
        return f"claims to replace {covered} but lacks some of its rows"
    return None


def scan_parts(run_dir: str | Path) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """(live parts, dead parts, unreadable parts with the reason) of a run.

    A plain ``samples.parquet`` file counts as one live part. An unreadable part's ``covers`` are unknown, so
    the parts it may have replaced stay live: the store may then see a row twice, never lose one.
    """
    samples = Path(run_dir) / SAMPLES
    if samples.exists() and not samples.is_dir():
        return ([samples], [], []) if samples.is_file() else ([], [], [(samples, "not a regular file")])
    covers, bad = {}, []
    for p in _parts(samples):
        try:
            covers[p] = _covers(p)
        except Exception as e:  # noqa: BLE001 - any unreadable footer: report it, go on
            bad.append((p, f"{type(e).__name__}: {e}"))
    on_disk = {p.name: p for p in covers}
    for p, names in list(covers.items()):
        try:
            why = next((w for c in names if (w := _false_claim(p, c, on_disk))), None)
        except Exception as e:  # noqa: BLE001 - a covered part we cannot read: keep both, say so
            why = f"cannot check what it replaces: {type(e).__name__}: {e}"
        if why:  # neither honoured nor read: the parts it names stay live
            del covers[p]
            bad.append((p, why))
    dead = {name for names in covers.values() for name in names}
    return [p for p in covers if p.name not in dead], [p for p in covers if p.name in dead], bad


def live_parts(run_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(live parts, dead parts) of a run; an unreadable part is an error naming it."""
    live, dead, bad = scan_parts(run_dir)
    if bad:
        raise ValueError("unreadable result parts: " + "; ".join(f"{p}: {why}" for p, why in bad))
    return live, dead


def to_table(rows: list[dict]) -> pa.Table:
    """Rows -> a table of :data:`SCHEMA`; a missing or unknown column is an error (an :data:`ADDED` one is
    null when missing)."""
    for row in rows:
        missing, extra = set(REQUIRED) - set(row), set(row) - set(SCHEMA.names)
        if missing or extra:
            raise ValueError(
                f"row {row_key(row) if not missing & set(KEY_COLUMNS) else row}: "
                f"missing columns {sorted(missing)}, unknown columns {sorted(extra)}"
            )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _write_part(samples_dir: Path, seq: int, table: pa.Table, covers: list[str]) -> Path:
    final = samples_dir / f"part-{seq:06d}.parquet"
    tmp = samples_dir / f".{final.name}.tmp"
    meta = dict(table.schema.metadata or {})
    meta[COVERS_KEY] = json.dumps(covers).encode()
    with open(tmp, "wb") as f:
        pq.write_table(table.replace_schema_metadata(meta), f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(samples_dir)
    return final


def read_samples(run_dir: str | Path) -> pd.DataFrame:
    """Every live row of a run (an empty frame of :data:`SCHEMA` when it has none); the :data:`ADDED` columns
    of a part written before them are null."""
    live, _ = live_parts(run_dir)
    if not live:
        return SCHEMA.empty_table().to_pandas()
    return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in live]).to_pandas()


# ---------------------------------------------------------------- writer


class RunWriter:
    """Buffered, resumable, crash-safe writer of one run's rows. Use :func:`open_run` to get one."""

    def __init__(self, run_dir: Path, *, chunk_rows: int = 256, flush_s: float = 60.0, max_parts: int = 64):
        if chunk_rows < 1 or max_parts < 2:
            raise ValueError(f"need chunk_rows >= 1 and max_parts >= 2, got {chunk_rows}, {max_parts}")
        self.run_dir = run_dir
        self.samples_dir = run_dir / SAMPLES
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.chunk_rows, self.flush_s, self.max_parts = chunk_rows, flush_s, max_parts
        self._lock = open(run_dir / ".lock", "w")  # noqa: SIM115 - held for the writer's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"{run_dir} is being written by another process") from None
        self._cleanup()
        live, _ = live_parts(run_dir)
        self.done: set[tuple[str, str, str, str]] = set()
        for p in live:
            keys = pq.read_table(p, columns=list(KEY_COLUMNS)).to_pylist()
            self.done.update(row_key(k) for k in keys)
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._t0, self._cpu0 = time.monotonic(), time.process_time()  # this session's cost, for the manifest

    def _next_seq(self) -> int:
        """One above every part on disk: a compacted part must sort after the parts it replaces."""
        return 1 + max((int(_PART_RE.match(p.name).group(1)) for p in _parts(self.samples_dir)), default=0)

    def _cleanup(self) -> None:
        """Delete temporary files and dead parts left by a killed writer."""
        for p in self.samples_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink()
        _, dead = live_parts(self.run_dir)
        for p in dead:
            p.unlink()

    def is_done(self, method: str, param: float | None, benchmark: str, problem_id: str) -> bool:
        return (method, param_key(param), benchmark, str(problem_id)) in self.done

    def add(self, rows: Iterable[dict]) -> int:
        """Buffer rows (those already done are dropped); write a part when the buffer is full.

        Returns how many rows were kept.
        """
        kept = 0
        for row in rows:
            key = row_key(row)
            if key in self.done:
                continue
            to_table([row])  # validate now, at the caller, not at a later flush
            self.done.add(key)
            self._buffer.append(row)
            kept += 1
        if len(self._buffer) >= self.chunk_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        return kept

    def _write_buffer(self) -> None:
        self._last_flush = time.monotonic()
        if self._buffer:
            _write_part(self.samples_dir, self._next_seq(), to_table(self._buffer), covers=[])
            self._buffer = []

    def flush(self) -> None:
        """Write the buffered rows as one part (atomically); compact when parts pile up."""
        self._write_buffer()
        if len(_parts(self.samples_dir)) > self.max_parts:
            self.compact()
        self._write_manifest()

    def _write_manifest(self, finished: bool = False) -> None:
        """The manifest with this session's cost so far (wall and CPU seconds of this process, all threads): a
        session killed later still says what it spent up to its last flush."""
        manifest = read_manifest(self.run_dir)
        manifest["updated_at"] = now()
        manifest["rows"] = len(self.done)
        if manifest.get("sessions"):
            manifest["sessions"][-1].update(
                wall_s=round(time.monotonic() - self._t0, 1), cpu_s=round(time.process_time() - self._cpu0, 1)
            )
        if finished:
            manifest["finished_at"] = manifest["updated_at"]
        write_json_atomic(self.run_dir / MANIFEST, manifest)

    def compact(self) -> None:
        """Merge every live part into one (see the module docstring for why a kill here is harmless)."""
        self._write_buffer()
        live, dead = live_parts(self.run_dir)
        if len(live) <= 1 and not dead:
            return
        table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in live])
        covers = sorted(p.name for p in live + dead)
        _write_part(self.samples_dir, self._next_seq(), table, covers=covers)
        for p in live + dead:
            p.unlink()
        _fsync_dir(self.samples_dir)

    def drop(self, methods: Iterable[str]) -> int:
        """Delete every row of ``methods`` (the model behind them was retrained, say), so they are generated
        again; returns how many rows went. Atomic like :meth:`compact`: one new part replaces all the others,
        so a kill leaves either the old rows or the new part, never half of it."""
        methods = sorted(set(methods))
        self._write_buffer()
        live, dead = live_parts(self.run_dir)
        if not live or not methods:
            return 0
        table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in live])
        kept = table.filter(pc.invert(pc.is_in(table["method"], value_set=pa.array(methods))))
        if kept.num_rows == table.num_rows:
            return 0
        _write_part(self.samples_dir, self._next_seq(), kept, covers=sorted(p.name for p in live + dead))
        for p in live + dead:
            p.unlink()
        _fsync_dir(self.samples_dir)
        self.done = {k for k in self.done if k[0] not in methods}
        return table.num_rows - kept.num_rows

    def close(self, *, finished: bool = True) -> None:
        """Flush, compact and mark the manifest finished (``finished=False`` after an error)."""
        self.compact()
        self._write_manifest(finished)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finished=exc_type is None)


def check_run_id(run_id) -> None:
    """A run id names one folder under ``runs/``: letters, digits, '.', '_', '-', not starting with '.'
    (``..`` would be the parent folder, a leading dot a hidden one)."""
    if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", run_id):
        raise ValueError(
            f"run_id {run_id!r} may only hold letters, digits, '.', '_' and '-', not first a '.'"
        )


def open_run(
    results_dir: str | Path, run_id: str, config: dict, *, identity: dict | None = None, **writer_kw
) -> RunWriter:
    """Create run ``run_id`` under ``results_dir/runs`` or resume it.

    ``config`` is recorded in the manifest. ``identity`` (default: ``config``) must equal the recorded one on
    resume: rows produced under other settings (pair, sampling, limits) must not be mixed into one run.
    """
    check_run_id(run_id)
    run_dir = Path(results_dir) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = config if identity is None else identity
    identity = json.loads(json.dumps(identity, default=str))  # what it reads back as
    path = run_dir / MANIFEST
    started = now()
    if path.is_file():
        manifest = read_manifest(run_dir)
        if manifest.get("identity") != identity:
            raise ValueError(
                f"{run_dir} was produced with other settings:\n"
                f"  recorded {manifest.get('identity')}\n"
                f"  now      {identity}\nuse another run_id"
            )
        manifest.update(config=config, updated_at=started, finished_at=None)
    else:
        manifest = {
            "run_id": run_id,
            "created_at": started,
            "updated_at": started,
            "finished_at": None,
            "sessions": [],
            "config": config,
            "identity": identity,
        }
    env = environment()
    manifest.update(env)  # the latest session's; every session's commit is kept below
    manifest["sessions"].append({"started_at": started, "git": env["git"], "config": config})
    writer = RunWriter(run_dir, **writer_kw)  # takes the lock before the manifest is touched
    write_json_atomic(path, manifest)
    return writer
