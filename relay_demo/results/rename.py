"""Rename methods of one evaluation run: their rows, and the manifest's record of how they were made.

    python -m relay_demo.results.rename results/runs/qwen2.5-coder-0.5b-1.5b-eval relay=relay-sft \\
        --pair relay-sft=qwen2.5-coder-0.5b-1.5b-relay-sft --why "the relay pair now serves the RL adapter"

For a method whose model was retrained: ``offline.evaluate`` refuses to add rows of new weights under the old
name, so the old rows take another name first (and, with ``--pair``, the registered pair that still serves
the old weights), then the method is run again under its own name. Atomic like ``RunWriter.drop``: one new
part replaces all the others; the run's lock keeps jobs out meanwhile; the manifest keeps a ``renames`` entry
(when, the commit, what, why).
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from relay_demo.results.manifest import environment, now, read_manifest, write_json_atomic
from relay_demo.results.parts import (
    MANIFEST,
    SAMPLES,
    SCHEMA,
    _fsync_dir,
    _parts,
    _seq,
    _write_part,
    live_parts,
)


def rename_methods(run_dir: str | Path, names: dict[str, str], *, why: str, pairs: dict | None = None) -> int:
    """Rename methods ``old -> new`` in the run's rows and manifest; ``pairs``: ``new -> pair`` recorded as
    the renamed method's pair. Returns how many rows were renamed."""
    run_dir, pairs = Path(run_dir), dict(pairs or {})
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir}: no {MANIFEST}: not an evaluation run")
    if not why.strip():
        raise ValueError("say why (--why): the manifest keeps it")
    if stray := sorted(set(pairs) - set(names.values())):
        raise ValueError(f"--pair names {stray}, which no rename produces")
    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{run_dir} is being written by another process") from None
        live, dead = live_parts(run_dir)
        if not live:
            raise ValueError(f"{run_dir} has no rows")
        table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in live])
        methods = table["method"].to_pylist()
        present = set(methods)
        if missing := sorted(set(names) - present):
            raise ValueError(f"no rows of {missing} in {run_dir}; its methods: {sorted(present)}")
        if clash := sorted(set(names.values()) & (present - set(names))):
            raise ValueError(f"{clash} already name rows of {run_dir}: pick other names")
        column = pa.array([names.get(m, m) for m in methods], type=SCHEMA.field("method").type)
        table = table.set_column(table.schema.get_field_index("method"), "method", column)
        samples = run_dir / SAMPLES
        seq = 1 + max(_seq(p) for p in _parts(samples))  # after every part it replaces
        _write_part(samples, seq, table, covers=sorted(p.name for p in live + dead))
        for p in live + dead:
            p.unlink()
        _fsync_dir(samples)
        manifest = read_manifest(run_dir)
        configs = [manifest.get("config"), manifest.get("identity")]
        for config in configs + [s.get("config") for s in manifest.get("sessions", [])]:
            for m in (config or {}).get("methods", []):
                if m.get("name") in names:
                    m["name"] = names[m["name"]]
                    if m["name"] in pairs:
                        m["pair"] = pairs[m["name"]]
        entry = {"at": now(), "git": environment()["git"], "methods": names, "pairs": pairs, "why": why}
        manifest.setdefault("renames", []).append(entry)
        write_json_atomic(run_dir / MANIFEST, manifest)
        return sum(m in names for m in methods)


def _pairs_of(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"{flag}: expected OLD=NEW, got {item!r}")
        out[old] = new
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m relay_demo.results.rename", description=__doc__.splitlines()[0]
    )
    ap.add_argument("run_dir", help="results/runs/<run_id>")
    ap.add_argument("renames", nargs="+", metavar="OLD=NEW")
    ap.add_argument(
        "--pair", action="append", default=[], metavar="NEW=PAIR", help="the renamed method's pair"
    )
    ap.add_argument("--why", required=True)
    args = ap.parse_args(argv)
    try:
        names = _pairs_of(args.renames, "renames")
        n = rename_methods(args.run_dir, names, why=args.why, pairs=_pairs_of(args.pair, "--pair"))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"renamed {n} rows: " + ", ".join(f"{a} -> {b}" for a, b in names.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
