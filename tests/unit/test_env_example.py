"""`.env.example` documents every setting the code reads, so an operator never has to grep for one."""

from __future__ import annotations

import re

from include.settings import REPO_ROOT

CODE_FOLDERS = ("include", "spark", "plugins", "dags", "stack")
# Literal setting names only: a bare prefix such as "PIPELINE_EXTRACT_" (used to filter names) is not a setting.
SETTING = re.compile(r"[\"'](PIPELINE_[A-Z0-9_]*[A-Z0-9])[\"']")


def settings_read_by_code() -> set[str]:
    names = set()
    for folder in CODE_FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            names.update(SETTING.findall(path.read_text()))
    return names


def documented_settings() -> set[str]:
    return set(re.findall(r"^# (PIPELINE_[A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(), re.MULTILINE))


def test_the_code_reads_settings_at_all():
    assert {"PIPELINE_PG_PORT", "PIPELINE_EXTRACT_PAGE_SIZE", "PIPELINE_DQ_MAX_KAFKA_LAG"} <= settings_read_by_code()


def test_every_setting_the_code_reads_is_documented():
    assert settings_read_by_code() - documented_settings() == set()


def test_every_documented_setting_is_read_by_the_code():
    assert documented_settings() - settings_read_by_code() == set()
