"""RelayLLM Studio: token-level collaborative decoding of a small student and a large teacher.

Nothing heavy happens at import: models load when a pair is asked for.
"""

__version__ = "0.1.0"
