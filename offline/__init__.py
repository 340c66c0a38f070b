"""Training and evaluation jobs for RelayLLM Studio. Each job module's docstring shows how to run it.

A job is a module with a ``main``: a dataclass config loaded from a YAML recipe (``offline/recipes/``, through
``offline.config``). Jobs import the library (``relay_demo``) and the helpers here (``offline.common``,
``offline.tasks``, ...), never another job; the library never imports this package (tests/test_layering.py).
"""
