"""The SQL of the store's views (``relay_demo.store``) over every run's samples and the runs' manifests."""

from __future__ import annotations

from .parts import ADDED

DTYPE_SEP = " · "  # "<pair> · <dtype>": one pair's rows of another dtype (SAMPLES_SQL)

# Problems of a split other than test carry it in their id ("gsm8k-train/19"; the test split's: "gsm8k/19"):
# such rows are the benchmark "gsm8k-train", so a dev run on held-out train problems is never averaged with
# the test split's rows of the same pair (nor its APGR computed against the test split's student and teacher).
BENCHMARK_SQL = """CASE WHEN strpos(problem_id, '/') > 0 AND starts_with(problem_id, benchmark || '-')
    THEN split_part(problem_id, '/', 1) ELSE benchmark END AS benchmark"""

# One row per (pair, method, param, benchmark, problem): when several runs hold it, the latest run's.
# A pair with runs in two dtypes (greedy decodes differ between them: the real pair's relay student solved
# 33 of 100 dev problems in float32, 26 in bfloat16) is two pairs here, "<pair> · <dtype>", so that no row of
# one dtype hides, or is paired with, a row of the other; a run whose dtype is unknown (older sessions with
# `auto`) keeps the bare name. A pair with runs in one dtype keeps its name.
SAMPLES_SQL = f"""
CREATE VIEW samples AS
WITH kinds AS (SELECT pair, count(DISTINCT dtype) AS n FROM runs GROUP BY pair),
labelled AS (
    SELECT s.* REPLACE (CASE WHEN r.dtype IS NOT NULL AND k.n > 1 THEN s.pair || '{DTYPE_SEP}' || r.dtype
                             ELSE s.pair END AS pair),
           r.created_at AS run_created
    FROM all_samples s LEFT JOIN runs r USING (run_id) LEFT JOIN kinds k ON k.pair = s.pair
    WHERE s.correct BETWEEN 0 AND 1 AND isfinite(s.correct)  -- ungraded rows are left out (and reported)
)
SELECT * EXCLUDE (run_created) FROM labelled
QUALIFY row_number() OVER (PARTITION BY pair, method, param, benchmark, problem_id
                           ORDER BY run_created DESC NULLS LAST, run_id DESC) = 1
"""

UNGRADED_SQL = """SELECT run_id, count(*) FROM all_samples
WHERE correct IS NULL OR NOT isfinite(correct) OR correct < 0 OR correct > 1 GROUP BY run_id"""

# The teacher alone on the same problem of the same run (a run has one pair) is the yardstick of the
# *_vs_teacher ratios (a ratio of sums over the rows that have what it needs; the split's averages only where
# every row has a split).
POINTS_SQL = """
CREATE OR REPLACE VIEW points AS
WITH alone AS (
    SELECT run_id, benchmark, problem_id, flops AS t_flops, wall_s AS t_wall FROM all_samples
    WHERE method = 'teacher' AND param IS NULL AND correct BETWEEN 0 AND 1
), costed AS (
    SELECT s.*, a.t_flops, a.t_wall, s.flops_student + s.flops_teacher_decode AS decode,
           a.t_flops > 0 AS t_ok, a.t_flops > 0 AND s.flops_teacher_prefill IS NOT NULL AS split_ok
    FROM samples s LEFT JOIN alone a USING (run_id, benchmark, problem_id)
)
SELECT pair, benchmark, method, param,
       COUNT(*) AS n,
       AVG(correct) AS accuracy,
       COALESCE(SUM(teacher_tokens) / NULLIF(SUM(student_tokens + teacher_tokens + command_tokens), 0), 0)
           AS call_ratio,
       AVG(flops) AS flops,
       SUM(flops) FILTER (t_ok) / SUM(t_flops) FILTER (t_ok) AS flops_vs_teacher,
       SUM(decode) FILTER (split_ok) / SUM(t_flops) FILTER (split_ok) AS decode_vs_teacher,
       SUM(flops_teacher_prefill) FILTER (split_ok) / SUM(t_flops) FILTER (split_ok) AS prefill_vs_teacher,
       SUM(wall_s) FILTER (t_wall > 0) / SUM(t_wall) FILTER (t_wall > 0) AS wall_vs_teacher,
       AVG(student_tokens + teacher_tokens + command_tokens) AS tokens,
       AVG(calls) AS calls,
       AVG(wall_s) AS wall_s,
       {split}
FROM costed
GROUP BY pair, benchmark, method, param
""".format(
    split=",\n       ".join(f"CASE WHEN COUNT({c}) = COUNT(*) THEN AVG({c}) END AS {c}" for c in ADDED)
)

MIXED_SQL = """SELECT s.pair, s.benchmark, s.method, s.param, bool_or(r.n_commits > 1) AS wall_mixed
FROM samples s JOIN runs r USING (run_id) GROUP BY s.pair, s.benchmark, s.method, s.param"""

# what the intervals and the paired comparisons resample: one row per (setting, problem) of a benchmark
SETTING_ROWS_SQL = """
SELECT method, param, problem_id, correct, teacher_tokens, run_id,
       student_tokens + teacher_tokens + command_tokens AS tokens
FROM samples WHERE pair = ? AND benchmark = ?
"""

PER_PROBLEM_SQL = """
SELECT problem_id, AVG(correct) AS correct,
       AVG(student_tokens + teacher_tokens + command_tokens) AS tokens,
       AVG(teacher_tokens) AS teacher_tokens, AVG(flops) AS flops
FROM samples
WHERE pair = ? AND benchmark = ? AND method = ? AND param IS NULL
GROUP BY problem_id ORDER BY problem_id
"""
