"""What the evaluation jobs write and every consumer reads: ``results/runs/<run_id>/``.

* :mod:`.parts`: the results schema, crash-safe chunked parts, the writer and the one reader.
* :mod:`.manifest`: the manifest beside the samples (config, git commit, packages, machine, dates).
* :mod:`.metrics`: APGR, CPT, the random-query router and the saving against it (pure functions).

The store (``relay_demo.store``), the app, the evaluation job and the tests all go through these modules.
"""
