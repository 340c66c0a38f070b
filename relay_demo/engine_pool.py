"""Engines shared between pairs by what they load, with reference counts, and the locks that keep them apart.

Several registered pairs name the same model: the three Qwen2.5-Coder pairs load one teacher folder (and the
base pair's student is the others' base), the toy pairs share ``results/models/tiny-arith/teacher``. Keyed by
pair, every pair held its own copy (three Qwen pairs: three 1.5B teachers, about 11 GB in bfloat16, on a Space
of 16 GB). Keyed by what the engine loads (the resolved folder or hub id, the backend, the dtype, the engine
keywords), two pairs with one teacher hold one teacher engine. Each pair holding an engine counts one
reference; the engine is closed when the last pair that uses it closes.

One generation at a time per engine: vLLM's step loop is not re-entrant, and a shared engine may be asked by
two pairs at once. So each engine has its own lock and a pair's lock (:class:`EngineLocks`) takes all of its
engines' locks, always in the order the locks were made: two pairs that share a teacher take turns, and
neither can hold one lock while waiting for the other's. Pairs that share nothing still run side by side.

The pool itself takes no lock: ``pairs.load_pair`` and ``Pair.close`` call it under the one load lock, which
also keeps vLLM's count of in-process engines (``vllm_engine._open_engines``) from racing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backends.base import ModelEngine, count_params

_order = itertools.count()  # every engine lock gets the next number; pairs take their locks by it

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}


class EngineLock:
    """One engine's re-entrant lock, with the place it takes in the global locking order."""

    def __init__(self):
        self.order = next(_order)
        self.rlock = threading.RLock()


class EngineLocks:
    """A re-entrant lock over several engines: ``acquire`` takes all of them or none (with ``timeout``, one
    deadline for all), in their global order. Used like ``threading.RLock`` (``with``, ``acquire(timeout=)``,
    ``release``)."""

    def __init__(self, locks: list[EngineLock]):
        unique = {id(lock): lock for lock in locks}.values()
        self._locks = [lock.rlock for lock in sorted(unique, key=lambda lock: lock.order)]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        taken = []
        for lock in self._locks:
            if not blocking:
                ok = lock.acquire(blocking=False)
            elif deadline is None:
                ok = lock.acquire()
            else:
                ok = lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            if not ok:  # all or none: a half-held pair would block the other pairs for nothing
                for held in reversed(taken):
                    held.release()
                return False
            taken.append(lock)
        return True

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()

    def __enter__(self) -> EngineLocks:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class Held:
    """An engine as a pair holds it: ``key`` is its key in the pool, or None for an engine the pair owns
    alone (a remote one, or a ``fresh`` load), which closes with the pair."""

    engine: ModelEngine
    lock: EngineLock
    key: tuple | None = None


@dataclass
class _Entry:
    held: Held
    refs: int
    nbytes: int


class EnginePool:
    """Open engines by key, with their reference counts and weight sizes. Callers serialise access."""

    def __init__(self):
        self._entries: dict[tuple, _Entry] = {}

    def take(self, key: tuple) -> Held | None:
        """One more reference to the open engine of ``key``, or None when none is open."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.refs += 1
        return entry.held

    def load(self, key: tuple, loader: Callable[[], ModelEngine], dtype: str) -> Held:
        """The engine of ``key`` with one more reference, loaded by ``loader`` if none is open."""
        held = self.take(key)
        if held is None:
            engine = loader()
            held = Held(engine, EngineLock(), key)
            self._entries[key] = _Entry(held, 1, weight_bytes(engine.n_params, dtype))
        return held

    def release(self, key: tuple) -> None:
        """One reference fewer; the last one closes the engine."""
        entry = self._entries[key]
        entry.refs -= 1
        if entry.refs == 0:
            del self._entries[key]
            entry.held.engine.close()

    def counts(self) -> dict[tuple, int]:
        """Each open engine's key and how many pairs hold it."""
        return {k: e.refs for k, e in self._entries.items()}

    def nbytes(self) -> int:
        """The open engines' weights, in bytes (parameters times the dtype's size)."""
        return sum(e.nbytes for e in self._entries.values())


def weight_bytes(n_params: int, dtype: str) -> int:
    return n_params * BYTES_PER_PARAM.get(dtype, 4)


def estimate_bytes(path: str, dtype: str) -> int:
    """A model's weight bytes from its config alone (no weights loaded); 0 for a hub id (no network here)."""
    if not Path(path).is_dir():
        return 0
    return weight_bytes(count_params(path), dtype)


def load_engine(backend: str, path: str, dtype: str, name: str, engine_kw: dict) -> ModelEngine:
    """A new engine of the model at ``path`` on ``backend`` (``hf`` or ``vllm``)."""
    if backend == "hf":
        from .backends.hf_engine import HFEngine

        return HFEngine.load(path, dtype=dtype, name=name, **engine_kw)
    from .backends.vllm_engine import VLLMEngine

    return VLLMEngine.load(path, dtype=dtype, **engine_kw)
