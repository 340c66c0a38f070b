"""``python -m relay_demo generate ...``: see relay_demo/cli.py."""

import os
import sys

from .cli import main

try:
    code = main()
    sys.stdout.flush()
except KeyboardInterrupt:  # Ctrl-C: what was written stays, no traceback
    sys.stderr.write("\ninterrupted\n")
    code = 130
except (
    BrokenPipeError
):  # `... | head`: the reader went away; point stdout at /dev/null so exit does not raise
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 141
sys.exit(code)
