"""What of the RL job's work folder outlives the machine it ran on (``offline/rl_relay.py``'s ``carry``).

The work folder (round adapters with their optimizer state, rollouts, the teacher filter) is ignored by git
and lasts as long as the machine: runs 1 and 2 lost theirs between two sessions and could never be evaluated
or served. With ``carry`` set (a folder committed beside the run's logs), every update also writes there the
newest round's adapter (in bfloat16, 17 MB for the real pair; no optimizer state) and the filter's rows. A
rerun whose work folder is behind that round (a fresh machine) takes them back and goes on from the round:
same training problems, a fresh optimizer (AdamW's moments restart; the update row says so), the rollouts of a
round not yet trained on drawn again. One round's adapter at a time: the folder is rewritten, so git holds
only the versions that were committed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from relay_demo.adapters import cast_adapter

STATE = "state.json"
FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def staged_copy(src: Path, dst: Path) -> Path:
    """A fresh ``dst.partial`` holding ``src``'s adapter files (not its optimizer state), to be renamed."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    return tmp


def _folder(root: Path) -> Path | None:
    """The carried folder, or the one a kill left mid-swap (``save`` renames the old one aside first)."""
    for p in (root, root.with_name(root.name + ".old")):
        if (p / STATE).is_file():
            return p
    return None


def save(carry: Path, adapter: Path, rnd: int, filter_rows: Path) -> None:
    """Carry round ``rnd``'s ``adapter`` (after ``rnd`` updates) and the filter's rows, atomically."""
    tmp, old = staged_copy(adapter, carry), carry.with_name(carry.name + ".old")
    cast_adapter(tmp / "adapter_model.safetensors", "bfloat16")
    if filter_rows.is_file():
        shutil.copy2(filter_rows, tmp / "filter.jsonl")
    (tmp / STATE).write_text(json.dumps({"round": rnd, "dtype": "bfloat16"}) + "\n", encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if carry.exists():
        carry.rename(old)
    tmp.rename(carry)
    shutil.rmtree(old, ignore_errors=True)


def restore(carry: Path, round_dir: Callable[[int], Path], have: int, filter_rows: Path) -> int | None:
    """Put the carried round into ``round_dir(round)`` when the work folder holds only rounds up to ``have``
    and the carried one is later; the filter's rows too when the work folder has none. Returns the restored
    round, or None."""
    folder = _folder(carry)
    if folder is None:
        return None
    rnd = int(json.loads((folder / STATE).read_text(encoding="utf-8"))["round"])
    if rnd <= have:
        return None
    dst = round_dir(rnd)
    tmp = staged_copy(folder, dst)
    shutil.rmtree(dst, ignore_errors=True)  # not a whole round (``have`` counts those)
    tmp.rename(dst)
    if not filter_rows.is_file() and (folder / "filter.jsonl").is_file():
        shutil.copy2(folder / "filter.jsonl", filter_rows)
    print(json.dumps({"restored": rnd, "from": str(folder)}), flush=True)
    return rnd
