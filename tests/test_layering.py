"""The project's shape (DESIGN.md, "Layout"), checked on the source itself.

* ``relay_demo/`` is the library and ``app.py`` its entry point: neither imports ``offline`` (the jobs), at
  module level or inside a function. With ``offline`` made unimportable, every library module still imports
  and the app still builds.
* A job (a module of ``offline/`` with a ``def main(``) imports the library and helpers, never another job.
* No module of ``relay_demo/`` or ``offline/`` is longer than 400 lines, and the relay loop
  (``relay_demo/relay/loop.py``, the file that defines ``relay_batch``) no longer than 300.

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_layering.py -q
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
LOOP, LOOP_MAX_LINES = "relay_demo/relay/loop.py", 300


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from offline import grpo` names a module
    return names


def _is_offline(name: str) -> bool:
    return name == "offline" or name.startswith("offline.")


def jobs() -> dict[str, Path]:
    """Modules of offline/ that define a top-level ``main``: the entry points."""
    out = {}
    for path in _modules("offline"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out[_module_name(path)] = path
    return out


def test_the_library_and_the_app_never_import_offline():
    bad = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if _is_offline(n))
        for p in [*_modules("relay_demo"), ROOT / "app.py"]
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_job_imports_another_job():
    found = jobs()
    assert {"offline.evaluate", "offline.train_base", "offline.grpo", "offline.warmup"} <= set(found)
    bad = {
        name: sorted(other for other in found if other != name and any(n == other for n in imported(path)))
        for name, path in found.items()
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_import_walker_sees_lazy_and_relative_imports():
    # the checks above are only as good as `imported`; a self-check on a module written for it
    pkg = ROOT / "relay_demo" / "ui"
    names = imported(pkg / "handlers.py")
    assert "relay_demo.answers" in names  # a relative import inside a function
    assert "relay_demo.pairs" in names and "relay_demo.ui.render" in names


def test_no_module_is_longer_than_400_lines_and_the_loop_than_300():
    long = {}
    for path in [*_modules("relay_demo"), *_modules("offline")]:
        rel = str(path.relative_to(ROOT))
        n = len(path.read_text().splitlines())
        if n > (LOOP_MAX_LINES if rel == LOOP else MAX_LINES):
            long[rel] = n
    assert long == {}
    assert "def relay_batch(" in (ROOT / LOOP).read_text()


BLOCKED = r"""
import importlib, pkgutil, sys

class NoOffline:
    def find_spec(self, name, path=None, target=None):
        if name == "offline" or name.startswith("offline."):
            raise ImportError(f"the library must not import {name}")
        return None

sys.meta_path.insert(0, NoOffline())
import relay_demo
skip = {"relay_demo.__main__"}
names = [m.name for m in pkgutil.walk_packages(relay_demo.__path__, "relay_demo.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
import app
from relay_demo.ui import build_demo
demo = build_demo()
assert type(demo).__name__ == "Blocks", type(demo)
assert not any(m == "offline" or m.startswith("offline.") for m in sys.modules)
print(len(names), "modules")
"""


@pytest.mark.timeout(300)
def test_the_library_imports_and_the_app_builds_with_offline_blocked():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-2]) >= 20  # every module of the library, not an empty walk
