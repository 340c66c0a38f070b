"""The Space settings the Hub reads (README front matter) match space.yaml and the pinned gradio.

.venv/bin/python -m pytest -q tests/test_space_config.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with a YAML front matter block between --- lines"
    return yaml.safe_load(match[1])


def gradio_pin() -> str:
    pins = re.findall(r"^gradio==(\S+)\s*$", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1, f"expected exactly one gradio==X pin in requirements.txt, found {pins}"
    return pins[0]


def space() -> dict:
    return yaml.safe_load((REPO / "space.yaml").read_text())


def test_readme_front_matter_equals_space_yaml() -> None:
    assert front_matter((REPO / "README.md").read_text(encoding="utf-8")) == space()


def test_sdk_version_is_the_pinned_gradio() -> None:
    config = space()
    assert config["sdk"] == "gradio"
    assert str(config["sdk_version"]) == gradio_pin()


def test_space_settings_are_valid_for_the_hub() -> None:
    config = space()
    # A bare 3.11 in YAML is the float 3.11 (and 3.10 would become 3.1): the Hub needs a string.
    assert config["python_version"] == "3.11"
    assert (REPO / config["app_file"]).is_file()
    assert config["suggested_hardware"] == "cpu-basic"
    assert config["license"] == "apache-2.0"
    assert 0 < len(config["short_description"]) <= 60  # the Hub rejects longer descriptions


def test_front_matter_parser_rejects_a_readme_without_one() -> None:
    with pytest.raises(AssertionError, match="front matter"):
        front_matter("# no front matter\n")
