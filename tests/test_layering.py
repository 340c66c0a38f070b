"""The project's shape (DESIGN.md, "Layout"), checked on the source itself.

* ``relay_demo/`` is the library and ``app.py`` its entry point: neither imports ``offline`` (the jobs), at
  module level or inside a function. With ``offline`` made unimportable, every library module still imports
  and the app still builds.
* A job (a module of ``offline/`` with a ``def main(``) imports the library and helpers, never another job.
* No module of ``relay_demo/`` or ``offline/`` is longer than 400 lines, and the relay loop
  (``relay_demo/relay/loop.py``, the file that defines ``relay_batch``) no longer than 300.
* No import circle among the project's modules: every import counts, inside a function or under
  ``TYPE_CHECKING`` too (a circle that works today works by the order of first imports, and breaks when a
  caller imports the other end first).

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


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Each import statement anywhere in ``path``: (module, names taken from it; [] for ``import module``),
    the module as an absolute dotted name (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            out.append(
                (".".join([*base, *([node.module] if node.module else [])]), [a.name for a in node.names])
            )
    return out


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names (relative imports resolved)."""
    names: set[str] = set()
    for mod, taken in _imports(path):
        names.add(mod)
        names.update(f"{mod}.{t}" for t in taken)  # `from offline import grpo` names a module
    return names


def project_modules() -> dict[str, Path]:
    """Every Python module of the repository (its own code: not the virtual environment)."""
    paths = [
        ROOT / "app.py",
        *(p for d in ("relay_demo", "offline", "benchmarks", "scripts", "tests") for p in _modules(d)),
    ]
    return {_module_name(p): p for p in paths}


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports. ``from pkg import sub`` leads to ``pkg.sub`` when that is a
    module, else to ``pkg``; the parent packages that Python initialises on the way are not edges (each is
    set up before its submodules, so they are no circle)."""
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        out = graph[name] = set()
        for mod, taken in _imports(path):
            subs = {f"{mod}.{t}" for t in taken} & mods.keys()
            out |= subs
            if mod in mods and (not taken or len(subs) < len(taken)):  # a name defined in mod
                out.add(mod)
        out.discard(name)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search; grey = on the current path)."""
    colour: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = "grey"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == "grey":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in colour and (found := visit(nxt)):
                return found
        path.pop()
        colour[node] = "black"
        return None

    for start in sorted(graph):
        if start not in colour and (found := visit(start)):
            return found
    return None


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


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert {"relay_demo.cli", "relay_demo.serve.app", "offline.routers", "app"} <= graph.keys()
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_the_circle_finder_finds_circles_and_nothing_else():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
    graph = import_graph()
    # a function-level relative import is an edge; `from . import ROOT` leads to the package itself
    assert "relay_demo.answers" in graph["relay_demo.ui.handlers"]
    assert "relay_demo" in graph["relay_demo.pairs"]


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
