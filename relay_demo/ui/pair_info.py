"""Which pairs the app offers and how: their labels and status lines, the sidebar's defaults for each, and the
shared loaded pair (``pairs.load_pair`` caches it for every user). Plain functions, no Gradio.

How many pairs the app keeps loaded. Every pair a user picks stays loaded for the next request, and pairs
share the engines of the models they have in common (``relay_demo.engine_pool``). Sharing alone does not
bound memory: a cpu-basic Space has 16 GB, and the three Qwen2.5-Coder pairs hold one 1.5B teacher and three
0.5B students (a merged copy per adapter): 6.1 GB of weights in bfloat16, 12.1 GB in float32 (a CPU without
bf16 units), where a cap of N pairs fits one case and not the other, and the toy pairs weigh nothing. So the
bound is on bytes of weights (parameters times dtype size, what the engines report), not on a count: before a
pair loads, the least recently used pairs that are not generating are closed until the weights fit
``weight_budget()``. Its default, 60% of the memory this process may use (the container's limit), leaves the
rest for the KV caches, activations, Python, Gradio and DuckDB: on a 16 GiB limit, 10.3 GB, so in float32 two
Qwen pairs stay (one teacher, two students: 10.1 GB) and in bfloat16 all three. ``RELAY_MAX_MODEL_GB``
overrides it (``0``: no bound). A pair closed this way loads again on its next request, with the usual
"Loading pair" note; a request that got the pair just before it closed still finishes on the transformers
backend (the engines are freed once it lets go of them), on vLLM it fails and the next one loads anew.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..knobs import KNOBS, POLICY_KNOBS, TEMPERATURE
from ..pairs import ROOT, available, load_pair, loaded_pairs, registry
from ..relay import Limits

DEFAULT_PAIR, FALLBACK_PAIR = "tiny-arith", "tiny-random"
DEFAULT_POLICY, DEFAULT_MAX_TOKENS = "learned", 128  # where a pair's registry entry sets no defaults


def hosted() -> bool:
    """Hosted mode (a public Space): registered pairs only, no paths from the UI, never remote code."""
    return os.environ.get("RELAY_HOSTED", "").strip().lower() in ("1", "true", "yes")


def backend() -> str:
    return os.environ.get("RELAY_BACKEND", "hf")


def default_pair() -> str:
    """``tiny-arith`` once its trained models are present, else the built-on-the-fly ``tiny-random``."""
    return DEFAULT_PAIR if available(DEFAULT_PAIR)[0] else FALLBACK_PAIR


def pair_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered pair; a pair that cannot run here says why in its label (models
    missing, or another backend than this app's); choosing it shows the whole reason in the status line."""
    out = []
    for name, spec in registry().items():
        backends = spec.get("backends", ("hf",))
        if not available(name)[0]:
            label = f"{name} (models not present)"
        elif backend() not in backends:
            label = f"{name} (needs {' or '.join(backends)}; this app runs {backend()})"
        else:
            label = name
        out.append((label, name))
    return out


def pair_status(name: str) -> str:
    """One line for the UI: the live pair and its description, or why it cannot run here."""
    spec = registry().get(name)
    if spec is None:
        return f"Unknown pair {name!r}."
    ok, why = available(name)
    desc = " ".join(str(spec.get("description", "")).split())
    if not ok:
        return f"Pair {name} cannot run here: {why}."
    if backend() not in spec.get("backends", ("hf",)):
        return f"Pair {name} runs on {', '.join(spec['backends'])}, not on this app's backend ({backend()})."
    return f"Live pair: {name} ({backend()}). {desc}"


MODEL_MEMORY_SHARE = 0.6  # of the process's memory, for model weights (see the module docstring)


def weight_budget() -> int | None:
    """The most bytes of model weights the app keeps loaded: ``RELAY_MAX_MODEL_GB`` (0 or less: no bound),
    else :data:`MODEL_MEMORY_SHARE` of :func:`memory_limit`."""
    raw = os.environ.get("RELAY_MAX_MODEL_GB", "").strip()
    if raw:
        gb = float(raw)
        return int(gb * 1e9) if gb > 0 else None
    limit = memory_limit()
    return None if limit is None else int(limit * MODEL_MEMORY_SHARE)


def memory_limit() -> int | None:
    """Bytes this process may use: the container's cgroup limit (a Space's 16 GB) or, below it, the
    machine's physical memory; None where neither can be read."""
    sizes = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (cgroup v2) or a huge number (v1) when unlimited: physical memory wins
            sizes.append(int(text))
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    return min(sizes) if sizes else None


def pair_loaded(name: str) -> bool:
    return name in loaded_pairs()


def get_pair(name: str):
    """The shared loaded pair (loads once per process, lazily; least recently used pairs close to keep the
    weights within :func:`weight_budget`). Unknown or missing pairs, and a load that fails, raise ValueError
    saying why; a failed load leaves nothing cached: the next request loads again."""
    if name not in registry():
        raise ValueError(f"unknown pair {name!r}; registered pairs: {', '.join(registry())}")
    ok, why = available(name)
    if not ok:
        raise ValueError(f"pair {name} cannot run here: {why}")
    try:
        return load_pair(name, backend=backend(), max_weight_bytes=weight_budget())
    except Exception as e:  # noqa: BLE001 - whatever broke the load (files, memory, imports): say it, go on
        first = (str(e).splitlines() or [""])[0][:300]
        raise ValueError(
            f"Pair {name} failed to load ({type(e).__name__}: {first}); the next request tries again."
        ) from e


def get_limits(name: str) -> Limits:
    """A registered pair's limits, read from the registry without loading its models."""
    spec = registry().get(name)
    if spec is None:
        raise ValueError(f"unknown pair {name!r}; registered pairs: {', '.join(registry())}")
    return Limits(**spec.get("limits", {}))


def pair_defaults(name: str) -> dict:
    """What the sidebar starts with for a pair (``defaults:`` in the registry): a policy that can hand over
    on it, the span length its student asks for as max N, max tokens enough for its examples to finish, the
    call bias and temperature its numbers were measured at; within the pair's limits. A pair without the
    block gets its limit as max N (a call is never cut short), the knobs' own call bias and temperature."""
    spec, limits = registry().get(name) or {}, get_limits(name)
    d = spec.get("defaults") or {}
    policy = d.get("policy", DEFAULT_POLICY)
    if policy not in POLICY_KNOBS:
        raise ValueError(
            f"pair {name}: defaults.policy {policy!r} is not a policy ({', '.join(POLICY_KNOBS)})"
        )
    return {
        "policy": policy,
        "max_n": max(1, min(int(d.get("max_n", limits.max_n)), limits.max_n)),
        "max_tokens": max(1, min(int(d.get("max_tokens", DEFAULT_MAX_TOKENS)), limits.max_tokens)),
        "call_bias": KNOBS["call_bias"].check(d.get("call_bias", KNOBS["call_bias"].default)),
        "temperature": TEMPERATURE.check(d.get("temperature", TEMPERATURE.default)),
    }


def router_folder(pair: str) -> Path | None:
    """The pair's trained router (``results/models/<pair>/router``), or None when there is none."""
    folder = ROOT / "results" / "models" / pair / "router"
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None
