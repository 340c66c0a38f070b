"""RelayLLM Studio: token-level collaborative decoding of a small student and a large teacher.

Nothing heavy happens at import: models load when a pair is asked for.
"""

from pathlib import Path

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parent.parent  # the repository: registry paths and results/ are under it
