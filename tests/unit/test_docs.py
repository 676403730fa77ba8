"""The README documents every setting the code has, and nothing it does not."""

from __future__ import annotations

import re
from pathlib import Path

from study_embed.settings import SETTINGS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_code():
    text = README.read_text()
    table = text[text.index("## Settings") : text.index("## Operations")]
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(--[a-z-]+)` \|", table, flags=re.M)
    assert sorted(rows) == sorted((s.env, s.flag) for s in SETTINGS)


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    quick = text[text.index("## Quick start") : text.index("## How it works")]
    commands = re.findall(r"^make (\S+)", quick, flags=re.M)
    assert commands == ["demo", "test"]
