"""The call-labelling job on scripted models: cut selection, trial order, examples, and resume after a
kill."""

from __future__ import annotations

import json

import pytest

from offline import label_calls as lc
from offline.tasks import load_benchmark


def test_pick_cuts_largest_margins_spaced_and_earliest_first():
    m = [(0.0, 1)] * 40
    for pos, margin in ((30, 9.0), (31, 8.0), (5, 7.0), (20, 0.5)):
        m[pos] = (margin, 1)
    # 31 is too close to 30; 20 is under the minimum margin
    assert lc.pick_cuts(m, n_cuts=3, min_gap=8, min_margin=1.0) == [5, 30]
    assert lc.pick_cuts(m, n_cuts=1, min_gap=8, min_margin=1.0) == [30]
    assert lc.pick_cuts([], 3, 8, 1.0) == []


def test_next_trial_follows_the_plan_and_skips_missing_cuts():
    cfg = lc.LabelCfg(trial_plan=[(0, 32), (1, 32), (2, 32), (0, 96)])
    assert lc.next_trial(cfg, [4, 9], []) == 0
    assert lc.next_trial(cfg, [4, 9], [{"trial": 0, "correct": False}]) == 1
    # only two cuts: (2, 32) cannot run, so (0, 96) comes next
    assert lc.next_trial(cfg, [4, 9], [{"trial": k, "correct": False} for k in (0, 1)]) == 3
    assert lc.next_trial(cfg, [4, 9], [{"trial": 0, "correct": True}]) is None
    assert lc.next_trial(cfg, [], []) is None


def test_jsonl_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "respo')  # killed mid-write
    log = lc.Jsonl(path)
    assert log.rows() == [{"id": "a"}]
    log.append([{"id": "c"}])
    assert [r["id"] for r in log.rows()] == ["a", "c"]


def test_config_refuses_bad_plans():
    with pytest.raises(lc.cfglib.ConfigError):
        lc.cfglib.load(lc.LabelCfg, overrides=["trial_plan=[[3, 32]]"])
    with pytest.raises(lc.cfglib.ConfigError):
        lc.cfglib.load(lc.LabelCfg, overrides=["keep_correct=2"])


class ScriptedModels:
    """Token ids are characters (ord). The student writes a wrong answer; the teacher, from any cut, writes
    the right one and ends: so the first trial at the first cut fixes every wrong solution. Problem 0's
    student is right."""

    EOS = 0

    def __init__(self, problems, kill_after: int | None = None):
        self.by_prompt = {}
        self.answers = {p.id: p.answer for p in problems}
        self.right = {problems[0].id}
        self.tokens = {"student_prompt": 0, "student_gen": 0, "teacher_prompt": 0, "teacher_gen": 0}
        self.calls = 0
        self.kill_after = kill_after

        class _T:
            eos_ids = {self.EOS}

        self.pair = type("P", (), {"teacher": _T})

    def _ids(self, text):
        return [ord(c) for c in text]

    def prompt_ids(self, problem):
        ids = self._ids(f"Q:{problem.id}|")
        self.by_prompt[tuple(ids)] = problem.id
        return ids

    def _pid(self, ids):
        for k, pid in self.by_prompt.items():
            if tuple(ids[: len(k)]) == k:
                return pid
        raise KeyError(ids)

    def _tick(self):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            raise KeyboardInterrupt("killed")

    def generate(self, role, prompts, max_tokens):
        if all(m <= 0 for m in max_tokens):
            return [[] for _ in prompts]  # as the real engine: no call when nothing has a budget
        self._tick()
        out = []
        for ids, m in zip(prompts, max_tokens, strict=True):
            pid = self._pid(ids)
            if m <= 0:
                out.append([])
            elif role == "student" and len(ids) == len(self.prompt_ids_of(pid)):
                ans = self.answers[pid] if pid in self.right else "999999"
                out.append(self._ids(f"so the answer is \\boxed{{{ans}}}")[:m] + [self.EOS])
            elif role == "teacher":
                out.append(self._ids(f" \\boxed{{{self.answers[pid]}}}")[:m] + [self.EOS])
            else:
                out.append(self._ids(" fine")[:m] + [self.EOS])
        return out

    def prompt_ids_of(self, pid):
        return next(k for k, v in self.by_prompt.items() if v == pid)

    def margins(self, prompts, starts):
        self._tick()
        # the teacher disagrees most at response position 3, then 12
        return [[(5.0 if i == 3 else 2.0 if i == 12 else 0.0, 1) for i in range(len(p) - s)] for p, s in
                zip(prompts, starts, strict=True)]  # fmt: skip

    def text(self, ids):
        return "".join(chr(i) for i in ids if i != self.EOS)


def test_job_labels_fixes_and_resumes_after_a_kill_without_redoing_work(tmp_path):
    cfg = lc.LabelCfg(n_problems=6, dev_size=3, chunk=2, out_dir=str(tmp_path / "labels"), keep_correct=1.0)
    dev, problems = lc.split_problems(cfg)
    assert len(dev) == 3 and len(problems) == 6
    assert not {p.id for p in dev} & {p.id for p in problems}
    assert all(p.id.startswith("gsm8k-train/") for p in problems)

    with pytest.raises(KeyboardInterrupt):
        lc.run(cfg, ScriptedModels(problems, kill_after=4))  # killed in the second chunk
    models = ScriptedModels(problems)
    stats = lc.run(cfg, models)
    out = tmp_path / "labels"
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    trials = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rollouts) == sorted(p.id for p in problems)  # each once
    assert len({(t["id"], t["trial"]) for t in trials}) == len(trials) == 5  # one trial per wrong solution
    assert all(t["pos"] == 3 and t["n"] == 32 and t["correct"] for t in trials)
    assert stats["student_correct"] == 1 and stats["fixed_by_one_call"] == 5
    assert stats["examples"] == 6 and stats["examples_with_call"] == 5
    assert json.loads((out / "dev_ids.json").read_text()) == [p.id for p in dev]
    examples = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    call = next(e for e in examples if e["n"])
    assert models.text(call["prefix_ids"]) == "so "
    assert set(stats["cost"]) == {"rollouts", "scores", "trials"}
    # a finished run, rerun, generates nothing
    again = ScriptedModels(problems)
    lc.run(cfg, again)
    assert again.calls == 0


def test_gsm8k_train_split_is_separate_from_test(shared_dir):
    train = load_benchmark("gsm8k", split="train")
    assert len(train) == 7473 and train[0].answer == "72"
    test_ids = {p.id for p in load_benchmark("gsm8k", n=50)}
    assert not test_ids & {p.id for p in train}
    with pytest.raises(ValueError, match="splits"):
        load_benchmark("math500", split="train")
