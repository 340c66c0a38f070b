"""The evaluation recipe's schema (``offline.evaluate``): the run, its methods and their sampling.

``EvalCfg.identity`` is what may not change within a run; a method keeps its policy, params, limits and
pair (``offline.evaluate.check_methods``); ``sizes`` may grow a run (seeded samples are nested).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from offline.eval_rows import RANDOM_QUERY
from offline.tasks import BENCHMARKS
from relay_demo.results import parts as rio

DEFAULT_POLICY = {
    "student": "student-only",
    "teacher": "teacher-only",
    "relay": "learned",
    "relay-teacher-free": "learned",
    "random-token": "random-token",
    "confidence": "confidence",
    "router": "router",
}
DEFAULT_LIMITS = {"relay-teacher-free": {"max_calls": 0}}
TWIN = "-teacher-free"


def default_policy(name: str) -> str | None:
    """The policy a method name implies: the table above; any other ``relay-*`` (a relay student of another
    training, e.g. ``relay-sft``) and its ``...-teacher-free`` twin are the learned policy."""
    if name in DEFAULT_POLICY:
        return DEFAULT_POLICY[name]
    return "learned" if name.startswith("relay-") else None


def default_limits(name: str) -> dict:
    """Limits a method name implies: a ``...-teacher-free`` twin's commands are written, never served."""
    return {"max_calls": 0} if name.endswith(TWIN) else DEFAULT_LIMITS.get(name, {})


@dataclass
class MethodCfg:
    name: str
    policy: str | None = None  # relay_demo.policies registry name; default from default_policy(name)
    params: dict = field(default_factory=dict)  # fixed policy keyword arguments
    sweep: dict = field(default_factory=dict)  # {knob: [values]}: one run per value, value -> `param` column
    limits: dict = field(default_factory=dict)  # overrides of the run's limits for this method
    ps: list[float] = field(default_factory=list)  # random-query only: shares of queries sent to the teacher
    # generate this method with another registered pair (e.g. the base student for the baselines); its rows
    # are still recorded under the run's pair, so every method of a pair lands on one chart
    pair: str | None = None
    # per-benchmark n for this method alone, at most the run's (samples are nested: its problems are among
    # the run's); 0 leaves the benchmark out. E.g. a baseline kept at an earlier, smaller size
    sizes: dict = field(default_factory=dict)

    def validate(self) -> None:
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in self.sizes.values()):
            raise ValueError(f"{self.name}: sizes must map benchmarks to counts >= 0, got {self.sizes}")
        if self.name == RANDOM_QUERY:
            if not self.ps or any(not 0 <= p <= 1 for p in self.ps):
                raise ValueError("random-query needs ps: a list of probabilities in [0, 1]")
            if self.policy or self.sweep:
                raise ValueError("random-query is computed from student and teacher rows: no policy, sweep")
            return
        if self.ps:
            raise ValueError(f"{self.name}: ps is for random-query only")
        if self.policy is None and default_policy(self.name) is None:
            known = sorted(DEFAULT_POLICY)
            raise ValueError(f"method {self.name!r} needs a policy (defaults exist for {known})")
        if len(self.sweep) > 1:
            raise ValueError(f"{self.name}: sweep one knob at a time, got {sorted(self.sweep)}")
        for knob, values in self.sweep.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{self.name}: sweep.{knob} must be a non-empty list")

    def settings(self) -> list[tuple[float | None, dict]]:
        """(param, policy kwargs) for each point of the sweep; one (None, params) without a sweep."""
        if not self.sweep:
            return [(None, dict(self.params))]
        ((knob, values),) = self.sweep.items()
        return [(float(v), {**self.params, knob: v}) for v in values]


@dataclass
class SamplingCfg:
    temperature: float = 0.0  # greedy by default: evaluation is then reproducible
    top_p: float = 1.0
    seed: int = 0


@dataclass
class EvalCfg:
    pair: str
    run_id: str
    benchmarks: list[str]
    methods: list[MethodCfg]
    backend: str = "hf"
    split: str = "test"
    n: int | None = None  # problems per benchmark (a seeded sample); None: the whole split
    sizes: dict = field(default_factory=dict)  # per-benchmark n, e.g. {gsm8k: 200, math500: 100}
    data_seed: int = 0
    limit: int | None = None  # --limit: at most this many of them (nested in larger runs)
    problems: list[str] | None = None  # --problems: only these problem ids
    sampling: SamplingCfg = field(default_factory=SamplingCfg)
    limits: dict = field(default_factory=dict)  # overrides of the pair's registered limits
    batch_size: int = 32
    engine: dict = field(default_factory=dict)  # engines' load keywords (vLLM: tensor_parallel_size)
    grading_time_limit: float = 5.0
    results_dir: str = "results"
    chunk_rows: int = 256
    description: str = ""
    redo: list[str] = field(default_factory=list)  # --redo: delete these methods' rows, then generate them

    def validate(self) -> None:
        rio.check_run_id(self.run_id)
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ValueError(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
        names = [m.name for m in self.methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"methods must be a non-empty list of distinct names, got {names}")
        for m in self.methods:
            stray = sorted(set(m.sizes) - set(self.benchmarks))
            bigger = {b: k for b, k in m.sizes.items() if b in self.benchmarks and k > self._size(b)}
            if stray or bigger:
                raise ValueError(
                    f"method {m.name}: sizes {m.sizes} must name the run's benchmarks with at most the "
                    f"run's counts ({ {b: self._size(b) for b in self.benchmarks} })"
                )
        if RANDOM_QUERY in names and not {"student", "teacher"} <= set(names):
            raise ValueError("random-query is computed from the student and teacher methods: list both")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 0):
            raise ValueError("batch_size must be >= 1 and limit >= 0")
        stray = sorted(set(self.sizes) - set(self.benchmarks))
        if stray or any(not isinstance(v, int) or v < 0 for v in self.sizes.values()):
            raise ValueError(f"sizes must map listed benchmarks to counts >= 0, got {self.sizes}")

    def _size(self, benchmark: str) -> float:
        n = self.sizes.get(benchmark, self.n)
        return math.inf if n is None else n

    def identity(self) -> dict:
        """What must not change within one run: rows made under other settings would not be comparable."""
        return {
            "pair": self.pair,
            "backend": self.backend,
            "split": self.split,
            "data_seed": self.data_seed,
            "sampling": dataclasses.asdict(self.sampling),
            "limits": self.limits,
        }
