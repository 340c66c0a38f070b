"""Shared test setup: `slow` tests deselected by default (pyproject addopts); shared data beside the repo.

make test                   # the fast tests
make test ARGS='-m slow'    # only the slow ones (real models, long runs); they skip when inputs are absent
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
# Benchmarks and fixtures are never copied into the repo: they live in ../shared (override: RELAY_SHARED).
SHARED = Path(os.environ.get("RELAY_SHARED", REPO.parent / "shared"))

# No deadline: the machine's cores are shared, so timing varies; no database: nothing written into the repo.
settings.register_profile("repo", deadline=None, database=None, print_blob=True)
settings.load_profile("repo")


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED} (set RELAY_SHARED)")
    return SHARED
