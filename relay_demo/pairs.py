"""The registry of model pairs (``pairs.yaml``) and how to load one.

    pair = load_pair("tiny-arith", backend="hf")       # loads once per process; shared read-only by callers
    pair.student, pair.teacher                          # ModelEngine objects
    pair.limits                                         # relay.Limits from the registry

A pair whose spec names an ``adapter`` (a LoRA folder from ``offline/warmup_lora.py``) gets as its student the
base model with that adapter merged in (``relay_demo.adapters.merged_student``: built once into a cache
folder, checked against the unmerged model), so both backends load it like any other model folder.

Either model, or both, can live behind a URL (a vLLM OpenAI server; ``relay_demo.backends.remote``)::

    pair = load_pair("tiny-arith", teacher_url="http://gpu-box:8000")         # local student, remote teacher
    pair = load_pair("tiny-arith", teacher_url=T, student_url=S)               # no model in this process
    pair = load_pair("qwen2.5-coder-0.5b-1.5b", teacher_url=T, tokenizer=DIR)  # models not on this machine

A remote model's tokenizer (and config, for FLOPs and end ids) comes from the pair's own folder for that role
(a relay student's adapter folder holds its tokenizer) or from ``tokenizer=``, a folder or hub id.

Pairs that load the same model share its engine (``relay_demo.engine_pool``: tiny-arith and tiny-arith-base
hold one teacher, as do the three Qwen pairs); ``Pair.close`` closes an engine only when no open pair uses it.

``tiny-random`` is built on the fly (``relay_demo.tiny_random``).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from . import ROOT
from .backends.base import ModelEngine, import_transformers
from .engine_pool import EngineLock, EngineLocks, EnginePool, Held, estimate_bytes, load_engine
from .relay import Limits
from .tiny_random import build_tiny_random

BACKENDS = ("hf", "vllm")


@dataclass
class Pair:
    name: str
    student: ModelEngine
    teacher: ModelEngine
    limits: Limits = field(default_factory=Limits)
    chat_kwargs: dict = field(default_factory=dict)
    backend: str = "hf"
    # one generation at a time per loaded pair: vLLM's step loop is not re-entrant. relay() / relay_batch()
    # take it themselves; re-entrant, so a caller that holds it (the app, the server) can call them too.
    # load_pair gives an EngineLocks over the pair's engines: pairs that share an engine take turns
    lock: threading.RLock | EngineLocks = field(default_factory=threading.RLock, repr=False)
    # how load_pair's pairs hold their engines (shared ones by reference); empty: the pair owns both
    held: tuple[Held, ...] = field(default=(), repr=False)
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Leave load_pair's cache (a closed engine refuses to run: the next load_pair loads anew) and let go
        of the engines; an engine another open pair still uses stays open."""
        with _load_lock:
            _close(self)


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    return yaml.safe_load((Path(__file__).parent / "pairs.yaml").read_text())


PAIRS = tuple(registry())

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand(value: str) -> str:
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def resolve(ref: str) -> str:
    """A registry path: expanded, made absolute against the repository root when it names a local folder."""
    ref = _expand(ref)
    p = Path(ref)
    if p.is_absolute():
        return str(p)
    local = ROOT / p
    if local.exists() or ref.startswith(("results/", "models/", "./")):
        return str(local)
    return ref  # a hub id such as Qwen/Qwen3-8B


def pair_paths(name: str, merge: bool = True) -> tuple[str, str]:
    """The student's and teacher's folders (or hub ids). ``merge=False``: a student adapter stays unmerged
    (the base student's folder is returned), for a student served elsewhere."""
    spec = _spec(name)
    if spec.get("build") == "tiny-random":
        folder = build_tiny_random()
        return str(folder / "student"), str(folder / "teacher")
    student = resolve(spec["student"])
    # base + adapter: the merged copy both backends load (built once, cached)
    if spec.get("adapter") and merge:
        from .adapters import merged_student

        student = str(merged_student(student, resolve(spec["adapter"])))
    return student, resolve(spec["teacher"])


def _remote(name: str, role: str, url: str, folder: str, tokenizer: str | None, **kw) -> ModelEngine:
    """The engine of a model served at ``url``; its tokenizer from ``tokenizer`` or the role's own folder."""
    from .backends.remote import RemoteEngine

    adapter = _spec(name).get("adapter") if role == "student" else None
    tok = tokenizer or folder
    if tokenizer is None and adapter:  # the relay student's tokenizer (with <call> / </call>): the adapter's
        from .adapters import adapter_tokenizer_folder

        tok = str(adapter_tokenizer_folder(folder, resolve(adapter)))
    # the model's own folder (or hub id) gives its parameter count and end ids, whatever the tokenizer
    return RemoteEngine.load(url, tok, config=folder, name=f"{name}/{role}", **kw)


def resolve_dtype(dtype: str) -> str:
    """``auto``: bfloat16 on a GPU or on a CPU with bf16 matrix units (AMX or AVX512-BF16), else float32.

    Measured on this project's CI machine (Xeon with AMX, 2 threads, vLLM 0.32 CPU, batches of 64): the
    Qwen2.5-Coder 0.5B writes 188 tok/s in bfloat16 against 74 in float32, the 1.5B 78 tok/s; a CPU without
    those units runs bf16 matmuls through slow emulation, so float32 stays the choice there."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available() or cpu_has_bf16():
        return "bfloat16"
    return "float32"


def pair_dtype(spec: dict, dtype: str | None = None) -> str:
    """The dtype a pair's engines compute in: ``dtype`` when given (an engine setting), else the pair's
    registered one (float32 when it names none), ``auto`` resolved on this machine."""
    return resolve_dtype(dtype or spec.get("dtype", "float32"))


def cpu_has_bf16() -> bool:
    """Whether this CPU advertises bf16 matrix instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def _spec(name: str) -> dict:
    reg = registry()
    if name not in reg:
        raise ValueError(f"unknown pair {name!r}; registered pairs: {', '.join(reg)}")
    return reg[name]


def purpose(name: str) -> str:
    """The pair's one line for the app: what it is for."""
    return " ".join(str(_spec(name).get("purpose", "")).split())


def _examples(name: str) -> list[tuple[str, str | None]]:
    out = []
    for e in _spec(name).get("examples") or []:
        if isinstance(e, dict):
            out.append((str(e.get("prompt", "")), None if e.get("answer") is None else str(e["answer"])))
        else:
            out.append((str(e), None))
    return out


def examples(name: str) -> list[str]:
    """Example prompts that fit the pair (``examples:`` in the registry; never test problems)."""
    return [p for p, _ in _examples(name)]


def example_answer(name: str, prompt: str) -> str | None:
    """The known answer of ``prompt`` when it is one of the pair's examples that lists one, else None."""
    want = " ".join(prompt.split())
    return next((a for p, a in _examples(name) if " ".join(p.split()) == want), None)


def off_task_hint(name: str, prompt: str) -> str | None:
    """A visible hint when ``prompt`` is outside what the pair knows (``task_pattern:`` in the registry, a
    regular expression a prompt of its task matches), else None: the toy answers anything else with digits."""
    pattern = _spec(name).get("task_pattern")
    if not pattern or re.fullmatch(pattern, prompt.strip(), flags=re.S):
        return None
    return f"{purpose(name)} This prompt is not one of its task's problems: expect noise, or try an example."


def same_model(a: str, b: str, role: str) -> bool:
    """Whether pairs ``a`` and ``b`` have the same model as ``role`` (then one server can stand for both)."""
    keys = (role, "build", "adapter") if role == "student" else (role, "build")
    return all(_spec(a).get(k) == _spec(b).get(k) for k in keys)


def available(name: str, served: tuple[str, ...] = ()) -> tuple[bool, str]:
    """Whether a pair's models can be loaded here, and if not, why (for the UI and the slow tests).
    ``served``: roles that a server holds and whose tokenizer comes from elsewhere (not checked here)."""
    spec = _spec(name)
    if spec.get("build"):
        return True, ""
    for role in ("student", "teacher"):
        if role in served:
            continue
        ref = resolve(spec[role])
        if Path(ref).is_absolute() and not (Path(ref) / "config.json").is_file():
            return False, f"{role} model not found at {ref}"
    if spec.get("adapter") and "student" not in served:
        ref = resolve(spec["adapter"])
        if not (Path(ref) / "adapter_config.json").is_file():
            return False, f"student adapter not found at {ref} (offline/warmup_lora.py trains it)"
    return True, ""


_loaded: dict[tuple[str, str, str], Pair] = {}  # (name, backend, engine keywords); least recently used first
_engines = EnginePool()  # engines by what they load, shared between the pairs above
_load_lock = threading.Lock()


def load_pair(
    name: str,
    backend: str = "hf",
    *,
    fresh: bool = False,
    teacher_url: str | None = None,
    student_url: str | None = None,
    tokenizer: str | None = None,
    remote_timeout_s: float | None = None,
    max_weight_bytes: int | None = None,
    **engine_kw,
) -> Pair:
    """Load (once per process) the named pair on a backend: ``hf`` (transformers) or ``vllm``; a model with a
    URL is driven on that vLLM OpenAI server instead (``tokenizer``, ``remote_timeout_s``: see the module
    docstring and ``RemoteEngine.load``). Engines are shared with the other loaded pairs that load the same
    model (``relay_demo.engine_pool``); ``fresh``: a pair of its own, in no cache, sharing nothing.

    ``max_weight_bytes``: before loading, close the least recently used pairs (those not generating) until
    the open engines' weights plus this pair's new ones fit; the pair asked for is loaded even when it alone
    does not fit."""
    spec = _spec(name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    urls = {r: u for r, u in (("student", student_url), ("teacher", teacher_url)) if u}
    if len(urls) < 2 and backend not in spec.get("backends", BACKENDS):  # both served: no local backend
        raise ValueError(f"pair {name!r} is registered for {', '.join(spec['backends'])}, not {backend}")
    remote_kw = {"tokenizer": tokenizer} | ({"read_timeout_s": remote_timeout_s} if remote_timeout_s else {})
    # another dtype, cache size or server is another pair
    key = (name, backend, repr(sorted({**engine_kw, **urls, **remote_kw}.items())))
    import_transformers()  # before any engine module: two threads' first imports of it collide
    with _load_lock:
        if key in _loaded and not fresh:
            _loaded[key] = _loaded.pop(key)  # now the most recently used
            return _loaded[key]
        ok, why = available(name, served=tuple(urls) if tokenizer else ())
        if not ok:
            raise FileNotFoundError(f"pair {name!r}: {why}")
        s_path, t_path = pair_paths(name, merge="student" not in urls)
        paths = {"student": s_path, "teacher": t_path}
        dtype = pair_dtype(spec, engine_kw.pop("dtype", None))
        held = _hold_engines(name, backend, paths, dtype, urls, remote_kw, engine_kw, fresh, max_weight_bytes)
        pair = Pair(
            name,
            held["student"].engine,
            held["teacher"].engine,
            Limits(**spec.get("limits", {})),
            dict(spec.get("chat_kwargs", {})),
            "remote" if len(urls) == 2 else backend,
            EngineLocks([h.lock for h in held.values()]),
            (held["student"], held["teacher"]),
        )
        if not fresh:
            _loaded[key] = pair
        return pair


def _hold_engines(name, backend, paths, dtype, urls, remote_kw, engine_kw, fresh, budget) -> dict[str, Held]:
    """Each role's engine: remote, shared from the pool (loaded there if new) or, ``fresh``, a new one."""
    held: dict[str, Held] = {}
    try:
        for role, url in urls.items():
            held[role] = Held(_remote(name, role, url, paths[role], **remote_kw), EngineLock())
        keys = {}
        for role in ("student", "teacher"):
            if role not in held:
                keys[role] = (paths[role], backend, dtype, repr(sorted(engine_kw.items())))
        if keys.get("teacher") is not None and keys.get("teacher") == keys.get("student"):
            # one model as both roles: two engines, as the relay runs the student and the teacher apart
            keys["teacher"] += ("teacher",)
        if not fresh:  # the engines already open count as this pair's before anything is closed for room
            held |= {role: h for role, k in keys.items() if (h := _engines.take(k)) is not None}
        if budget is not None:
            new = [(paths[r], k) for r, k in keys.items() if r not in held]
            _make_room(budget - sum(estimate_bytes(path, dtype) for path, _ in new))
        for role, k in keys.items():
            if role in held:
                continue

            def loader(role=role):
                # a shared engine keeps the name of the pair that loaded it first
                return load_engine(backend, paths[role], dtype, f"{name}/{role}", engine_kw)

            held[role] = Held(loader(), EngineLock()) if fresh else _engines.load(k, loader, dtype)
        if budget is not None:  # the estimate knows no hub model's size: the loaded engines do
            _make_room(budget)
        return held
    except BaseException:
        _let_go(list(held.values()))
        raise


def _make_room(budget: int) -> None:
    """Close least recently used pairs until the open engines' weights fit ``budget``. A pair that is
    generating (its lock taken) is skipped: closing its engines would fail the generation."""
    for pair in list(_loaded.values()):
        if _engines.nbytes() <= budget:
            return
        if pair.lock.acquire(blocking=False):
            try:
                _close(pair)
            finally:
                pair.lock.release()


def _close(pair: Pair) -> None:
    """Pair.close under the load lock: out of the cache, each engine let go once."""
    for key in [k for k, p in _loaded.items() if p is pair]:
        del _loaded[key]
    if not pair.closed:
        pair.closed = True
        _let_go(list(pair.held) or [Held(pair.student, EngineLock()), Held(pair.teacher, EngineLock())])


def _let_go(held: list[Held]) -> None:
    for h in held:
        if h.key is None:
            h.engine.close()
        else:
            _engines.release(h.key)


def open_engines() -> dict[tuple, int]:
    """The engines load_pair's pairs hold now, each with how many pairs hold it (key: folder or hub id,
    backend, dtype, engine keywords)."""
    with _load_lock:
        return _engines.counts()


def param_counts(name: str) -> tuple[int, int]:
    """(student, teacher) parameters: a loaded pair's engines', else counted from the configs alone (no
    weights loaded; merging an adapter changes no count, so a LoRA student counts as its base model)."""
    with _load_lock:
        pair = next((p for k, p in _loaded.items() if k[0] == name), None)
    if pair is not None:
        return pair.student.n_params, pair.teacher.n_params
    from .backends.base import count_params

    spec = _spec(name)
    paths = (resolve(spec["student"]), resolve(spec["teacher"])) if spec.get("adapter") else pair_paths(name)
    if not all(Path(p).is_dir() for p in paths):  # hub ids: no network from here, the engines count them
        raise LookupError(f"{name} is not loaded and its models are on the hub: sizes show once it loads")
    return count_params(paths[0]), count_params(paths[1])


def loaded_pairs() -> set[str]:
    """Names of the pairs :func:`load_pair` holds now."""
    with _load_lock:
        return {k[0] for k in _loaded}


class OnePairAtATime:
    """For a job that moves from pair to pair: :meth:`switch_to` closes the pair used last, unless it was
    loaded before this object was made (the caller's own pairs stay open)."""

    def __init__(self):
        self.callers = loaded_pairs()
        self.last: str | None = None

    def switch_to(self, name: str) -> None:
        if self.last is not None and self.last != name and self.last not in self.callers:
            unload_pairs([self.last])
        self.last = name


def unload_pairs(names) -> None:
    """Close the pairs of these names that :func:`load_pair` holds, and free their memory (a job that moves
    from one pair to the next holds one at a time: two real pairs do not fit a 24 GiB box)."""
    import gc

    with _load_lock:
        for pair in [p for k, p in _loaded.items() if k[0] in set(names)]:
            _close(pair)
    gc.collect()
