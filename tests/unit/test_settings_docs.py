"""The README's configuration table against the settings object: every setting is
listed, and every default it states in code font is the one the settings hold."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from driftline.streams.cli.main import app
from driftline.streams.settings import Settings, setting_variables, unknown_variables

ROOT = Path(__file__).resolve().parents[2]


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Configuration"):text.index("## Metrics")]


def _rows() -> list[tuple[list[str], list[str]]]:
    rows = []
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) >= 3 and "DRIFTLINE_" in cells[0]:
            names = re.findall(r"`(?:DRIFTLINE|\.\.\.)_(\w+)`",
                               re.sub(r"\(or `\w+`\)", "", cells[0]))
            rows.append((names, [d.strip() for d in cells[1].split(", ")]))
    return rows


def _by_env() -> dict[str, Any]:
    """Each setting's default by every environment name it is read from."""
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        out[name.upper()] = field.default
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if alias else []):
            out[str(choice).removeprefix("DRIFTLINE_").upper()] = field.default
    return out


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_in_the_readme_table() -> None:
    section = _section()
    missing = [n for n in Settings.model_fields
               if f"DRIFTLINE_{n.upper()}" not in section and f"..._{n.upper()}" not in section]
    assert not missing


def test_the_defaults_the_table_states_are_the_settings_defaults() -> None:
    by_env = _by_env()
    checked = 0
    for names, defaults in _rows():
        if len(names) != len(defaults):
            continue
        for env, shown in zip(names, defaults, strict=True):
            default = by_env[env]
            if shown == "unset":
                assert default in (None, ""), env
            elif shown.startswith("`") and shown.endswith("`"):
                assert shown.strip("`") == _shown(default), env
            else:
                continue
            checked += 1
    assert checked >= 50  # the table, not a row or two, is what is checked


def test_a_misspelt_setting_is_reported_not_ignored() -> None:
    env = {"DRIFTLINE_LABEL_JOIN_MAXX": "5", "DRIFTLINE_LABEL_JOIN": "all",
           "driftline_segments": "false", "DRIFTLINE_MODEL_CONFIG_FILE": "m.yaml",
           "DRIFTLINE_TEST_BOOTSTRAP": "x:1", "PATH": "/bin"}
    assert unknown_variables(env) == ["DRIFTLINE_LABEL_JOIN_MAXX"]
    assert {f"DRIFTLINE_{n.upper()}" for n in Settings.model_fields} <= setting_variables()
    res = CliRunner().invoke(app, ["config"], env={"DRIFTLINE_PANEZ": "3"})
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.output)["unknown_variables"] == ["DRIFTLINE_PANEZ"]
