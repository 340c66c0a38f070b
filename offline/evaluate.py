"""Evaluation job: pair x methods (and their sweeps) x benchmarks, batched through ``relay_batch``.

    python -m offline.evaluate --config offline/recipes/tiny-arith/eval.yaml
    python -m offline.evaluate --config offline/recipes/tiny-arith/eval.yaml --limit 20     # a quick subset
    python -m offline.evaluate --config offline/recipes/tiny-arith/eval.yaml --methods student,teacher
    python -m offline.evaluate --config offline/recipes/qwen2.5-coder-0.5b-1.5b/eval.yaml \\
        --problems gsm8k/0,gsm8k/1 backend=hf batch_size=4                             # key=value overrides
    python -m offline.evaluate --config ... --teacher-url URL    # engine.teacher_url=URL; --student-url too

Writes ``results/runs/<run_id>/{manifest.json, samples.parquet/}`` (``relay_demo/results/``; rows are built
in ``offline/eval_rows.py``). Rerunning the same command resumes: every (method, param, benchmark, problem)
already written is skipped, so a job killed at any moment loses at most the batch in flight. The manifest
records the whole config, the sampling settings, the resolved limits, the git commit, package versions and the
machine, with paths inside the repository written relative to it.

Methods (``methods:`` in the recipe; ``policy`` defaults from the name):

=====================  ==================  ===========================================================
name                   policy              notes
=====================  ==================  ===========================================================
student / teacher      student-only / ...  one model alone
relay                  learned             the student's own ``<call>N</call>`` commands (the paper)
relay-teacher-free     learned             ``limits: {max_calls: 0}``: commands are written, never served
relay-X                learned             a relay student of another training (``pair:`` says which);
                                           ``relay-X-teacher-free`` is its twin
random-token           random-token        ``sweep: {p: [...]}``
confidence             confidence          ``sweep: {tau: [...]}``
router                 router              ``params: {path: ...}``, ``sweep: {threshold: [...]}``
random-query           (none)              computed from this run's student and teacher rows per problem
                                           (the exact expectation at each ``p``), never generated
=====================  ==================  ===========================================================

A method may name another registered ``pair:`` (the tiny pair's baselines run on the base student, its relay
methods on the relay student); its rows are recorded under the run's pair; one pair is in memory at a time.
A method may keep a smaller nested sample (``sizes: {gsm8k: 200}``, ``0`` leaves a benchmark out) when the
run grows. The manifest records a digest of the weights the project trained for each method's pair; a
method whose pair was retrained since is refused (rename it, or use another run_id). It also records the
dtype each method computed in (``auto`` resolved on the machine): a run takes rows of one dtype only.

Batches are fixed slices of each benchmark's problem list and batch ``k`` is sampled with seed
``sampling.seed + k``, so a resumed run draws what an uninterrupted one would have (given a deterministic
engine).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from offline import config as cfglib
from offline.eval_config import (  # noqa: F401 (the recipe's schema, importable from here as before)
    DEFAULT_LIMITS,
    DEFAULT_POLICY,
    EvalCfg,
    MethodCfg,
    SamplingCfg,
    default_limits,
    default_policy,
)
from offline.eval_rows import RANDOM_QUERY, random_query_rows, result_row
from offline.tasks import load_benchmark
from offline.tasks.base import Problem
from relay_demo import ROOT
from relay_demo.results import parts as rio
from relay_demo.results.manifest import run_dtypes, session_dtypes

# ---------------------------------------------------------------- problems and rows


def select_problems(cfg: EvalCfg, benchmark: str, n: int | None = None) -> list[Problem]:
    """The run's seeded sample of ``benchmark``, or the nested sample of ``n`` (a method's own size)."""
    if n is None:
        n = cfg.sizes.get(benchmark, cfg.n)
    if cfg.limit is not None:
        n = cfg.limit if n is None else min(n, cfg.limit)
    problems = load_benchmark(benchmark, split=cfg.split, n=n, seed=cfg.data_seed)
    if cfg.problems is not None:
        wanted = set(cfg.problems)
        problems = [p for p in problems if p.id in wanted]
    return problems


# ---------------------------------------------------------------- the job


@dataclass
class Cell:
    """One (method, setting, benchmark) to generate."""

    method: MethodCfg
    param: float | None
    policy_kwargs: dict
    benchmark: str
    problems: list[Problem]


def cells(cfg: EvalCfg, problems: dict[str, list[Problem]]) -> Iterator[Cell]:
    for m in cfg.methods:
        if m.name == RANDOM_QUERY:
            continue
        for param, kwargs in m.settings():
            for b in cfg.benchmarks:
                if b not in m.sizes:
                    yield Cell(m, param, kwargs, b, problems[b])
                elif m.sizes[b]:
                    yield Cell(m, param, kwargs, b, select_problems(cfg, b, m.sizes[b]))


def _batches(problems: list[Problem], size: int) -> Iterator[tuple[int, list[Problem]]]:
    for k in range(0, len(problems), size):
        yield k // size, problems[k : k + size]


Generate = Callable[[Cell, list[Problem], int], list]  # (cell, problems, batch index) -> RelayResults


def engine_generate(cfg: EvalCfg, get_pair: Callable[[], object]) -> Generate:
    """The real generator: ``relay_batch`` with the cell's policy, limits and the batch's seed.

    ``get_pair`` is called at the first batch, so a resumed run with nothing left loads no model.
    """
    from relay_demo.backends.base import Sampling
    from relay_demo.pairs import OnePairAtATime, load_pair
    from relay_demo.policies import make_policy
    from relay_demo.relay import Limits, relay_batch

    def policy_of(method: MethodCfg, kwargs: dict):
        return make_policy(method.policy or default_policy(method.name), **kwargs)

    # a bad knob, limit, sampling value or a missing router fails now, before the manifest records the
    # settings
    Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.seed)
    for m in cfg.methods:
        for _, kwargs in [] if m.name == RANDOM_QUERY else m.settings():
            policy_of(m, kwargs)
        try:
            Limits(**{**cfg.limits, **default_limits(m.name), **m.limits})
        except TypeError as e:
            raise ValueError(f"method {m.name}: limits: {e}") from None

    held = OnePairAtATime()

    def generate(cell: Cell, problems: list[Problem], k: int) -> list:
        held.switch_to(cell.method.pair or cfg.pair)
        if cell.method.pair:
            pair = load_pair(cell.method.pair, backend=cfg.backend, **cfg.engine)
        else:
            pair = get_pair()
        policy = policy_of(cell.method, cell.policy_kwargs)
        limits = dataclasses.replace(
            pair.limits, **{**cfg.limits, **default_limits(cell.method.name), **cell.method.limits}
        )
        sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.seed + k)
        return relay_batch(pair, [p.prompt for p in problems], policy, limits=limits, sampling=sampling)

    return generate


def trained_weights(pair: str) -> str | None:
    """A digest of the weights this project trained for ``pair`` (its adapter, else its student when it
    lives under results/), e.g. ``adapter:1f2e...``; None for a pair of published or built models."""
    from relay_demo.pairs import registry, resolve

    spec = registry().get(pair) or {}
    for key in ("adapter", "student"):
        if not isinstance(spec.get(key), str):
            continue
        folder = Path(resolve(spec[key]))
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if files and folder.resolve().is_relative_to((ROOT / "results").resolve()):
            digest = hashlib.sha256()
            for f in files:
                digest.update(f.read_bytes())
            return f"{key}:{digest.hexdigest()[:16]}"
    return None


def _method_identity(m: dict) -> dict:
    return {k: m.get(k) for k in ("policy", "params", "limits", "pair")}


def engine_dtype(cfg: EvalCfg, pair: str) -> str | None:
    """The dtype ``pair``'s engines compute in here (``auto`` resolved); None for an unknown pair with no
    ``engine.dtype``."""
    from relay_demo.pairs import pair_dtype, registry

    spec, named = registry().get(pair), cfg.engine.get("dtype")
    return None if spec is None and not named else pair_dtype(spec or {}, named)


def _with_weights(cfg: EvalCfg, methods: list[dict]) -> list[dict]:
    return [
        m
        if m["name"] == RANDOM_QUERY
        else {
            **m,
            "weights": trained_weights(m.get("pair") or cfg.pair),
            "dtype": engine_dtype(cfg, m.get("pair") or cfg.pair),
        }
        for m in methods
    ]


def check_methods(run_dir: Path, cfg: EvalCfg, methods: list[dict]) -> None:
    """A method already in the run must keep its policy, params, limits and pair (its sweep and sizes may
    grow), and the weights its pair was trained to (recorded since they were: a retrained adapter's rows
    never mix with the old one's under one name). Every row of a run is made in one dtype."""
    if not (run_dir / rio.MANIFEST).is_file():
        return
    now = {m["name"]: m for m in methods}
    sessions = rio.read_manifest(run_dir).get("sessions", [])
    made = run_dtypes({"sessions": sessions})
    coming = session_dtypes({"methods": methods})
    if made and coming - made or len(made) > 1:
        # greedy decodes differ between dtypes (the real pair's warm-up adapter on the RL dev set: 33% in
        # float32, 26% in bfloat16), so rows of two dtypes must not be paired within one run
        raise ValueError(
            f"{run_dir}: its rows were made in {', '.join(sorted(made))}, these would be in "
            f"{', '.join(sorted(coming))} (engine.dtype, or `auto` on this machine); use another run_id, "
            "or a machine that resolves the same dtype"
        )
    for session in sessions:
        for m in (session.get("config") or {}).get("methods", []):
            if m["name"] not in now:
                continue
            before, after = _method_identity(m), _method_identity(now[m["name"]])
            if before != after:
                was = f"method {m['name']!r} was run with {before}, now {after}"
                raise ValueError(f"{run_dir}: {was}; give it another name or use another run_id")
            old, new = m.get("weights"), now[m["name"]].get("weights")
            if old and new and old != new:
                was = f"method {m['name']!r} was run with trained weights {old}, its pair now has {new}"
                raise ValueError(f"{run_dir}: {was}; give it another name or use another run_id")


def results_path(cfg: EvalCfg) -> Path:
    path = Path(cfg.results_dir)
    return path if path.is_absolute() else ROOT / path


def run(cfg: EvalCfg, generate: Generate, *, progress: bool = True, extra_config: dict | None = None) -> Path:
    """Generate every pending row, then the random-query rows; returns the run folder."""
    from tqdm import tqdm

    problems = {b: select_problems(cfg, b) for b in cfg.benchmarks}
    config = {**cfglib.to_dict(cfg), **(extra_config or {})}
    config["methods"] = _with_weights(cfg, config["methods"])
    check_methods(results_path(cfg) / "runs" / cfg.run_id, cfg, config["methods"])
    writer = rio.open_run(
        results_path(cfg), cfg.run_id, config, identity=cfg.identity(), chunk_rows=cfg.chunk_rows
    )
    try:
        if cfg.redo:
            # random-query rows are expectations over student and teacher rows: redone with them
            redo = set(cfg.redo) | ({RANDOM_QUERY} if {"student", "teacher"} & set(cfg.redo) else set())
            dropped = writer.drop(redo)
            print(f"--redo: deleted {dropped} rows of {', '.join(sorted(redo))}", file=sys.stderr)
        todo = [
            (c, k, [p for p in batch if not writer.is_done(c.method.name, c.param, c.benchmark, p.id)])
            for c in cells(cfg, problems)
            for k, batch in _batches(c.problems, cfg.batch_size)
        ]
        todo = [(c, k, batch) for c, k, batch in todo if batch]
        total = sum(len(b) for _, _, b in todo)
        bar = tqdm(total=total, disable=not progress, unit="problem", dynamic_ncols=True)
        for cell, k, batch in todo:
            bar.set_description(
                f"{cell.method.name}{'' if cell.param is None else f'={cell.param:g}'} {cell.benchmark}"
            )
            results = generate(cell, batch, k)
            if len(results) != len(batch):
                raise RuntimeError(f"generator returned {len(results)} results for {len(batch)} prompts")
            pairs = zip(batch, results, strict=True)
            writer.add(result_row(cfg, cell.method.name, cell.param, p, r) for p, r in pairs)
            writer.flush()  # one part per batch: a kill loses at most the batch in flight
            bar.update(len(batch))
        bar.close()
        rq = next((m for m in cfg.methods if m.name == RANDOM_QUERY), None)
        if rq is not None:
            samples = rio.read_samples(writer.run_dir)
            for b in cfg.benchmarks:
                writer.add(random_query_rows(cfg, samples, b, rq.ps))
    except BaseException:
        writer.close(finished=False)
        raise
    writer.close()
    return writer.run_dir


def parse_args(argv: list[str] | None) -> EvalCfg:
    parser = argparse.ArgumentParser(prog="python -m offline.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML recipe (offline/recipes/<pair>/eval*.yaml)")
    parser.add_argument("--limit", type=int, help="at most this many problems per benchmark")
    parser.add_argument("--problems", help="comma-separated problem ids (e.g. gsm8k/0,gsm8k/7)")
    parser.add_argument("--methods", help="comma-separated method names: run only these from the recipe")
    for role in ("teacher", "student"):
        parser.add_argument(f"--{role}-url", metavar="URL", help=f"the {role} on a vLLM OpenAI server")
    parser.add_argument(
        "--redo",
        help="comma-separated method names whose rows are deleted first and generated again "
        "(after retraining the model behind them)",
    )
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unexpected arguments {bad}; overrides look like key=value")
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    for role, url in (("teacher", args.teacher_url), ("student", args.student_url)):
        overrides += [f"engine.{role}_url={json.dumps(url)}"] if url else []
    if args.problems:
        ids = [p.strip() for p in args.problems.split(",") if p.strip()]
        overrides.append(f"problems={json.dumps(ids)}")
    cfg = cfglib.load(EvalCfg, args.config, overrides)
    for flag in ("redo", "methods"):  # method names, each in the recipe
        names = [n.strip() for n in (getattr(args, flag) or "").split(",") if n.strip()]
        if unknown := sorted(set(names) - {m.name for m in cfg.methods}):
            parser.error(f"--{flag}: {unknown} not in the recipe ({', '.join(m.name for m in cfg.methods)})")
        if names:
            setattr(cfg, flag, names if flag == "redo" else [m for m in cfg.methods if m.name in names])
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Config and settings errors end in one line and exit 2, before anything is written."""
    try:
        return _main(argv)
    except (cfglib.ConfigError, ValueError, TypeError) as e:
        print(f"python -m offline.evaluate: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    cfg = parse_args(argv)
    from relay_demo.pairs import available, load_pair, registry, resolve, same_model
    from relay_demo.relay import Limits
    from relay_demo.results.manifest import repo_relative

    spec = registry().get(cfg.pair)
    if spec is None:  # fail now, before any work
        raise SystemExit(f"unknown pair {cfg.pair!r}; registered: {', '.join(registry())}")
    served = tuple(r for r in ("student", "teacher") if cfg.engine.get(f"{r}_url"))
    for name in {cfg.pair, *(m.pair for m in cfg.methods if m.pair)}:
        if name not in registry():
            raise SystemExit(f"unknown pair {name!r}; registered: {', '.join(registry())}")
        _, why = available(name, served if cfg.engine.get("tokenizer") else ())
        why += "".join(f"its {r} is not {cfg.pair}'s" for r in served if not same_model(name, cfg.pair, r))
        if why:  # a URL serves one model: a method's other pair must have the same one
            raise SystemExit(f"pair {name!r} cannot be loaded here: {why}")
    models = {r: resolve(spec[r]) for r in ("student", "teacher") if r in spec}
    models = models or {"build": spec.get("build")}
    limits = dataclasses.asdict(Limits(**{**spec.get("limits", {}), **cfg.limits}))
    extra = repo_relative(  # the machine's absolute paths say nothing to a reader of the manifest
        {
            "pair_spec": spec,
            "method_pairs": {m.name: registry()[m.pair] for m in cfg.methods if m.pair},
            "models": models,
            "resolved_limits": limits,
            "argv": sys.argv if argv is None else argv,
        }
    )
    generate = engine_generate(cfg, lambda: load_pair(cfg.pair, backend=cfg.backend, **cfg.engine))
    run_dir = run(cfg, generate, extra_config=extra)
    print(f"results in {run_dir}; summary: python -m relay_demo.store summary --pair {cfg.pair}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
