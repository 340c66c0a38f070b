"""``python -m relay_demo generate ...``: see relay_demo/cli.py."""

import sys

from .cli import main

sys.exit(main())
