"""`.env.example` documents every setting the code reads, so an operator never has to grep for one. The settings are
the fields of include/settings.py's `Settings`, the one place any of them is declared."""

from __future__ import annotations

import re

from include.settings import REPO_ROOT, setting_names

# Names written out in the code, e.g. in an error message or a DAG's docs: each must be a declared setting.
CODE_FOLDERS = ("include", "spark", "plugins", "dags", "stack")
SETTING = re.compile(r"\b(PIPELINE_[A-Z0-9_]*[A-Z0-9])\b")


def documented_settings() -> set[str]:
    return set(re.findall(r"^# (PIPELINE_[A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(), re.MULTILINE))


def test_settings_are_declared():
    assert {"PIPELINE_PG_PORT", "PIPELINE_EXTRACT_PAGE_SIZE", "PIPELINE_DQ_MAX_KAFKA_LAG"} <= setting_names()


def test_every_setting_is_documented_and_every_documented_one_exists():
    assert setting_names() - documented_settings() == set()
    assert documented_settings() - setting_names() == set()


def test_every_setting_named_in_the_code_is_declared():
    named = {name for folder in CODE_FOLDERS for path in (REPO_ROOT / folder).rglob("*.py")
             for name in SETTING.findall(path.read_text())}
    assert named - setting_names() == set()
