"""Answer extraction and grading on a hand-made corpus of tricky answers (relay_demo/answers.py).

OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_answers.py -q
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offline.tasks import grade_response, load_benchmark
from offline.tasks.base import Problem
from relay_demo import answers as grading
from relay_demo.answers import extract_answer, extract_boxed, grade

# (response, reference, multiple, expected verdict)
CORPUS = [
    # fractions and decimals
    (r"So $x = \boxed{\frac{1}{2}}$.", "0.5", False, True),
    (r"\boxed{0.5}", r"\frac{1}{2}", False, True),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", False, True),
    (r"\boxed{1/3}", r"\frac{1}{3}", False, True),
    (r"\boxed{25}", "025", False, True),  # AIME references keep leading zeros
    (r"\boxed{0.33}", r"\frac{1}{3}", False, False),  # rounding is not equality
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", False, True),
    # nesting: braces inside the box, a box inside a box, the last box wins
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", False, True),
    (r"\boxed{\boxed{7}}", "7", False, True),
    (r"first \boxed{3}, corrected: \boxed{4}", "4", False, True),
    (r"first \boxed{4}, corrected: \boxed{3}", "4", False, False),
    (r"\boxed{\{1, 2\}}", r"\{1,2\}", False, True),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", False, True),
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", False, True),
    # units and decorations
    (r"\boxed{5 \text{ cm}}", "5", False, True),
    (r"\boxed{5\,\mathrm{cm}}", "5", False, True),
    (r"\boxed{90^\circ}", "90", False, True),
    (r"\boxed{\$18}", "18", False, True),
    (r"\boxed{x = 2}", "2", False, True),
    # GSM8K style
    ("She pays 1,000 + 234.\n#### 1,234", "1234", False, True),
    ("#### $1,234", "1234", False, True),
    ("#### 1234.00", "1234", False, True),
    ("#### 1,235", "1234", False, False),
    (r"\boxed{1,234}", "1234", False, True),
    # "the answer is" fallback
    ("The answer is 42.", "42", False, True),
    (r"So the final answer is $\frac{7}{2}$.", "3.5", False, True),
    ("Answer: 12", "12", False, True),
    # multiple answers (OlympiadBench is_multiple_answer), order does not matter
    (r"\boxed{84, 69}", "69, 84", True, True),
    (r"\boxed{69} and \boxed{84}", "69, 84", True, True),
    (r"\boxed{69}", "69, 84", True, False),
    (r"\boxed{(2,7,13),(1,8,19),(4,5,7)}", "(1,8,19), (2,7,13), (4,5,7)", True, True),
    (r"\boxed{-2, 0, 2}", "-2,0,2", True, True),
    # scientific notation (Minerva)
    (r"\boxed{4.5e33}", "4.5e33", False, True),
    (r"\boxed{4.5 \times 10^{33}}", "4.5e33", False, True),
    # malformed LaTeX or no answer: wrong, never an exception
    (r"\boxed{\frac{1}{2}", "0.5", False, False),
    (r"\boxed{\frac{1}{}}", "0.5", False, False),
    (r"\boxed{}}}{{", "1", False, False),
    (r"\boxed{\sqrt[}{2}}", "2", False, False),
    (r"\boxed{\left( 1, 2 \right.}", "(1,2)", False, False),
    ("", "3", False, False),
    (None, "3", False, False),
    ("I do not know.", "3", False, False),
    ("\\boxed", "3", False, False),
]


@pytest.mark.parametrize(("response", "reference", "multiple", "expected"), CORPUS)
def test_corpus(response, reference, multiple, expected):
    g = grade(response, reference, multiple=multiple)
    assert g.correct is expected, (response, reference, g)


def test_extraction_details():
    assert extract_boxed(r"a \boxed{1} b \fbox{2} \boxed{\frac{a}{b}}") == ["1", "2", r"\frac{a}{b}"]
    assert extract_boxed(r"\boxed{unclosed \boxed{3}") == ["3"]  # the unbalanced outer box is skipped
    assert extract_boxed(r"\boxed{\{x\}}") == [r"\{x\}"]  # escaped braces do not count
    assert extract_boxed(r"\boxedx{1}") == []
    assert extract_answer(r"\boxed 7 is it") == "7"
    assert extract_answer("#### 1,234\nthen \\boxed{5}") == "5"  # boxed wins over ####
    assert extract_answer("no answer here") is None


def test_reasons():
    assert grade("nothing", "1").reason == "no-answer"
    assert grade(r"\boxed{2}", "1").reason == "mismatch"
    assert grade(r"\boxed{1}", "1").reason == "match"
    with pytest.raises(ValueError, match="empty reference"):
        grade(r"\boxed{1}", " ")
    with pytest.raises(ValueError, match="time_limit"):
        grade(r"\boxed{1}", "1", time_limit=0)


def test_time_limit_is_enforced(monkeypatch):
    def slow(gold, pred):  # stands for sympy stuck on an adversarial expression
        time.sleep(5)
        return True

    monkeypatch.setattr(grading, "_verify", slow)
    t0 = time.monotonic()
    g = grade(r"\boxed{x^2}", "y", time_limit=0.3)
    assert (g.correct, g.reason) == (False, "timeout")
    assert time.monotonic() - t0 < 2


def test_grading_from_a_thread_works_and_is_bounded():
    out = {}

    def work():
        out["g"] = grade(r"\boxed{\frac{1}{2}}", "0.5", time_limit=60)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert out["g"].correct


def test_benchmark_graders_read_their_references():
    gsm = Problem("gsm8k/x", "q", "1234", "gsm8k")
    assert grade_response("gsm8k", "so #### 1,234", gsm).correct
    olymp = Problem("olympiadbench/x", "q", "69, 84", "olympiadbench", {"multiple": True})
    assert grade_response("olympiadbench", r"\boxed{84}, \boxed{69}", olymp).correct
    arith = Problem("arith-test-0-0", "q", "150", "arith")
    assert grade_response("arith", "... #### 150", arith).correct
    assert not grade_response("arith", r"\boxed{150}", arith).correct  # the synthetic task's format is ####


def test_every_reference_solution_grades_correct():
    """MATH-500's and Minerva's worked solutions end in the reference answer; GSM8K's in #### N."""
    import json

    from offline.tasks.math_benchmarks import data_dir

    if data_dir() is None:
        pytest.skip("no local benchmark data")
    for name, field in (("math500", "solution"), ("minerva_math", "solution"), ("gsm8k", "answer")):
        lines = (data_dir() / name / "test.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines if x.strip()]
        problems = load_benchmark(name)
        graded = zip(problems, rows, strict=True)
        wrong = [p.id for p, r in graded if not grade_response(name, r[field], p).correct]
        assert len(wrong) <= len(problems) // 100, (name, wrong[:10])


LATEXISH = st.text(alphabet=list("\\{}$#,.-+/^_()[] 0123456789abxfracboxedsqrtleftight"), max_size=60)


@settings(max_examples=150, deadline=None)
@given(LATEXISH, st.sampled_from(["1", r"\frac{1}{2}", "1, 2", "(1,2)", "x^2"]), st.booleans())
def test_grading_never_raises(response, reference, multiple):
    g = grade(response, reference, multiple=multiple, time_limit=2)
    assert g.reason in {"match", "mismatch", "no-answer", "timeout", "error"}
    assert g.correct == (g.reason == "match")


def test_first_answer_is_not_charged_for_imports():
    """A fresh process: loading sympy and the LaTeX grammar must not count against the first answer."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from relay_demo.answers import grade; "
        "g = grade(r'\\boxed{\\frac{1}{2}}', '0.5', time_limit=0.05); print(g.reason)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "match", out


def test_data_dir_override_and_prompts(tmp_path, monkeypatch):
    import json

    (tmp_path / "gsm8k").mkdir()
    rows = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1:,}", "idx": i}
        for i in (5, 1999)
    ]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    probs = load_benchmark("gsm8k")
    assert [(p.id, p.answer) for p in probs] == [("gsm8k/5", "6"), ("gsm8k/1999", "2000")]
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert probs[0].prompt == "What is 5 + 1?\n" + instruction
    assert [p.id for p in load_benchmark("gsm8k", n=1, seed=3)] in (["gsm8k/5"], ["gsm8k/1999"])
    with pytest.raises(FileNotFoundError, match="math500"):
        load_benchmark("math500")
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="RELAY_DATA_DIR"):
        load_benchmark("gsm8k")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("gsm8K")
