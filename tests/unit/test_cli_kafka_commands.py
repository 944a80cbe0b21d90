"""Kafka commands' checks and output, without a broker: what they refuse before
connecting, how a broker that does not answer ends, and names from the topics shown
literally."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from driftline.streams.cli import kafka_commands, main, shadow


def test_alerts_refuses_an_unknown_kind_before_connecting() -> None:
    res = CliRunner().invoke(main.app, ["alerts", "--kind", "Data", "-b", "127.0.0.1:1"])
    assert res.exit_code == 2 and "no alert kind 'Data'" in res.output
    assert "data, prediction, concept, quality, shadow" in res.output


def test_a_kafka_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def unreachable() -> None:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))

    monkeypatch.setattr(main, "app", unreachable)
    monkeypatch.setattr(sys, "argv", ["driftline", "status"])
    with pytest.raises(SystemExit) as exit_:
        main.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Kafka: Failed to get metadata") and "Traceback" not in err
    assert "DRIFTLINE_BOOTSTRAP_SERVERS" in err and err.count("\n") == 1


def test_status_rows_carry_the_shadow_candidates_beyond_the_limit() -> None:
    rows = [{"model": "live", "partition": 0, "events_applied": 5, "shadow_ignored": 600},
            {"model": "live", "partition": 1, "events_applied": 5, "shadow_ignored": 7},
            {"model": "other", "partition": 2, "events_applied": 1}]
    by = {r["model"]: r for r in kafka_commands._per_model(rows)}
    assert by["live"]["shadow_ignored"] == 607 and "shadow_ignored" not in by["other"]


def test_shadow_report_shows_hostile_candidate_names_literally(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate named like Rich markup or with terminal escapes is printed as text."""
    row: dict[str, Any] = {"verdict": "safe", "agreement": 0.99, "window_comparable": 500,
                           "pairs_total": 900, "score_diff_mean": 0.01, "js": 0.01,
                           "unpaired_live": 0, "unpaired_shadow": 0}
    rows = [{**row, "candidate": "cand[/]"}, {**row, "candidate": "\x1b[31mRED\x1b[0m"}]
    monkeypatch.setattr(shadow, "shadow_report", lambda _s, _m: rows)
    res = CliRunner().invoke(main.app, ["shadow", "report", "-m", "live", "-b", "127.0.0.1:1"])
    assert res.exit_code == 0, res.output
    assert "cand[/]" in res.output and "\x1b[31m" not in res.output and "\\x1b" in res.output
    res = CliRunner().invoke(main.app, ["shadow", "report", "-m", "live", "-c", "nosuch",
                                        "-b", "127.0.0.1:1"])
    assert res.exit_code == 2 and "live has no candidate nosuch" in res.output


def test_produce_refuses_an_unknown_drift_unit_before_connecting() -> None:
    res = CliRunner().invoke(main.app, ["produce", "--drift-unit", "bogus", "-b", "127.0.0.1:1"])
    assert res.exit_code == 2 and "--drift-unit takes seconds or events" in res.output
