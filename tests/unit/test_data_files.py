"""Data files as users write them (spreadsheet exports, blank cells, ISO times, NPZ
arrays), read by ``evaluate``, ``reference set --file`` and ``produce --replay``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from driftline.detectors.errors import InputError, SnapshotError
from driftline.detectors.reference import build_profile
from driftline.detectors.serialization import sign_record
from driftline.detectors.tables import read_table, to_batch
from driftline.streams import admin
from driftline.streams.cli.kafka_commands import _replay
from driftline.streams.cli.main import app
from driftline.streams.investigation import gather


def test_a_spreadsheet_bom_does_not_rename_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffts,f0,prediction\n100,1.5,0.2\n101,2.5,0.3\n".encode())
    table = read_table(path)
    assert list(table.features) == ["f0"]
    assert table.ts is not None and table.ts.tolist() == [100.0, 101.0]


def test_missing_value_markers_keep_a_numeric_column_numeric(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("f0,f1,country\n1.5,n/a,NA\nN/A,2,DE\n#N/A,<NA>,\n , null ,FR\n3,-nan,NA\n")
    table = read_table(path)
    f0, f1 = table.features["f0"], table.features["f1"]
    assert f0.dtype == np.float64 and f1.dtype == np.float64
    assert np.isnan(f0[[1, 2, 3]]).all() and f0[[0, 4]].tolist() == [1.5, 3.0]
    assert np.isnan(f1[[0, 2, 3, 4]]).all() and f1[1] == 2.0
    # a text column keeps its cells: "NA" may be a category (Namibia); blank is missing
    assert table.features["country"].tolist() == ["NA", "DE", None, "FR", "NA"]


def test_segment_cells_are_text_and_blank_cells_leave_their_key_out(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text("f0,segment_region,segment_tier\n1,eu,1\n2,,2\n3,us,\n4,,\n")
    table = read_table(path)
    assert to_batch("m", table).segment.tolist() == [
        {"region": "eu", "tier": "1"}, {"tier": "2"}, {"region": "us"}, None]


def test_ts_as_iso_text_datetimes_or_numbers_and_a_bad_cell_refused(tmp_path: Path) -> None:
    iso = tmp_path / "iso.csv"
    iso.write_text("ts,f0\n2026-03-01T08:00:00Z,1\n2026-03-01T08:00:01,2\n,3\n")
    ts = read_table(iso).ts
    assert ts is not None and ts[:2].tolist() == [1772352000.0, 1772352001.0]
    assert np.isnan(ts[2])
    npz = tmp_path / "dt.npz"
    when = np.array(["2026-03-01T08:00:00", "NaT"], dtype="datetime64[ns]")
    np.savez(npz, ts=when, f0=np.array([1.0, 2.0]))
    ts = read_table(npz).ts
    assert ts is not None and ts[0] == 1772352000.0 and np.isnan(ts[1])
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,f0\n100,1\nyesterday,2\n")
    with pytest.raises(InputError, match="ts row 2"):
        read_table(bad)
    text = tmp_path / "text.npz"
    np.savez(text, ts=np.array(["100.5", "nope"]), f0=np.array([1.0, 2.0]))
    with pytest.raises(InputError, match="ts row 2"):
        read_table(text)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"f0": np.zeros((3, 2))}, "one-dimensional"),
    ({"f0": np.zeros(3), "f1": np.zeros(4)}, "differ in length"),
    ({"f0": np.zeros(0)}, "no rows"),
])
def test_malformed_npz_files_are_refused_with_the_reason(
        arrays: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        read_table(path)


def test_an_empty_current_file_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "ref.csv").write_text(
        "f0,f1\n" + "\n".join(f"{a:.3f},{b:.3f}" for a, b in rng.normal(size=(500, 2))) + "\n")
    (tmp_path / "empty.csv").write_text("f0,f1\n")
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"),
                                   "-c", str(tmp_path / "empty.csv")])
    assert res.exit_code == 2 and "no rows" in res.output


def _csv(path: Path, x: np.ndarray) -> None:
    path.write_text("f0,f1\n" + "\n".join(f"{a:.4f},{b:.4f}" for a, b in x) + "\n")


def test_a_window_too_short_to_decide_says_insufficient_not_no_drift(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _csv(tmp_path / "ref.csv", rng.normal(size=(3000, 2)))
    _csv(tmp_path / "cur.csv", rng.normal(size=(3000, 2)) + np.array([1.0, 0.0]))
    for window, held in ((10_000, "3000"), (20_000, "no window closed")):
        res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                       str(tmp_path / "cur.csv"), "--window", str(window),
                                       "--json", str(tmp_path / "out.json")])
        assert res.exit_code == 0, res.output
        assert "insufficient data" in res.output and held in res.output
        assert "no drift" not in res.output
        out = orjson.loads((tmp_path / "out.json").read_bytes())
        assert out["insufficient"] is True and out["drift"] is False
        assert out["min_samples"] == window // 2
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--window", "1000", "--json", "-"])
    out = orjson.loads(res.output)
    assert out["insufficient"] is False and out["drift"] is True
    firing = [a for a in out["alerts"] if a["state"] == "firing"]
    assert firing and all(len(a["features"]) == len(set(a["features"])) for a in firing)
    assert firing[0]["features"][0] == "f0"


def test_replay_sends_rows_without_a_time_last_and_without_ts(tmp_path: Path) -> None:
    path = tmp_path / "rep.csv"
    path.write_text("ts,f0,segment_region\n105,1,eu\n,2,\n101,3,us\n100,4,eu\n")
    sent: list[dict[str, Any]] = []
    assert _replay(path, "m", 0.0, sent.append, threading.Event()) == 4
    assert [e.get("ts") for e in sent] == [100.0, 101.0, 105.0, None]
    assert [e["features"]["f0"] for e in sent] == [4.0, 3.0, 1.0, 2.0]
    assert "ts" not in sent[3] and "segment" not in sent[3]
    assert sent[0]["segment"] == {"region": "eu"}


def test_slo_render_of_a_bad_spec_is_an_error_message(tmp_path: Path) -> None:
    spec = tmp_path / "slo.yaml"
    spec.write_text("slos: [{name: x, model: m, objective: 120}]\n")
    res = CliRunner().invoke(app, ["slo", "render", str(spec)])
    assert res.exit_code == 2 and res.output.startswith("error: ")
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["slo", "render", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_investigate_verifies_a_signed_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    profile = build_profile("m", {"f0": rng.normal(size=500)}, created_at=0.0)
    key = b"k" * 32
    record = sign_record(profile.to_json(), key)
    monkeypatch.setattr(admin, "read_compacted", lambda *a, **k: {b"m": record})
    monkeypatch.setattr(admin, "iter_to_end", lambda *a, **k: iter(()))
    args: dict[str, Any] = {"inference_topic": "i", "references_topic": "r",
                            "changes_topic": "c", "model": "m", "segment": {}, "since": None}
    ref, batches, _, _ = gather({}, key=key, **args)
    assert ref is not None and ref.reference_id == profile.reference_id and batches == []
    with pytest.raises(SnapshotError):
        gather({}, key=b"x" * 32, **args)
    res = CliRunner().invoke(app, ["investigate", "--model", "m", "-b", "127.0.0.1:1"],
                             env={"DRIFTLINE_SNAPSHOT_KEY": "y" * 32})
    assert res.exit_code == 1 and "not usable" in res.output


def test_a_new_version_of_a_profile_gets_a_new_reference_id(tmp_path: Path) -> None:
    """A worker takes a reference whose id it holds as unchanged: setting a profile JSON
    again under another --version must change the id."""
    from driftline.detectors.reference import ReferenceProfile
    from driftline.streams.cli.kafka_commands import _profile
    from driftline.streams.settings import Settings

    rng = np.random.default_rng(3)
    profile = build_profile("m", {"f0": rng.normal(size=500)}, model_version="v1",
                            created_at=0.0)
    path = tmp_path / "m.json"
    path.write_bytes(profile.to_json())
    same = _profile("m", path, Settings(), "v1")
    assert same.reference_id == profile.reference_id
    v2 = _profile("m", path, Settings(), "v2")
    assert v2.model_version == "v2" and v2.reference_id != profile.reference_id
    assert v2.reference_id.startswith("m@")
    back = ReferenceProfile.from_json(v2.to_json())
    assert back.reference_id == v2.reference_id and back.model_version == "v2"
    assert v2.with_model_version("v2").reference_id == v2.reference_id  # content digest


@pytest.mark.parametrize(("header", "message"), [
    ("f0,f1,", "column 3 of the header has no name"),
    ("f0,f1,f0", "'f0' more than once"),
    ("f0,f1,segment_", "needs a key after it"),
])
def test_a_header_without_a_name_or_with_a_name_twice_is_refused(
        header: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(f"{header}\n1,2,3\n")
    with pytest.raises(InputError, match=message):
        read_table(path)


def test_evaluate_refuses_a_window_below_two(tmp_path: Path) -> None:
    _csv(tmp_path / "ref.csv", np.zeros((10, 2)))
    for w in ("0", "-5"):
        res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                       str(tmp_path / "ref.csv"), "--window", w])
        assert res.exit_code == 2 and "--window" in res.output


def test_two_sample_mode_names_absent_and_unprofiled_columns_instead_of_testing_them(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(3000, 3))
    (tmp_path / "ref.csv").write_text("f0,f1,f2,prediction\n" + "\n".join(
        f"{a:.4f},{b:.4f},{c:.4f},{p:.4f}" for (a, b, c), p in zip(ref, rng.random(3000),
                                                                   strict=True)) + "\n")
    cur = rng.normal(size=(2000, 3))
    (tmp_path / "cur.csv").write_text("f0,f2,extra\n" + "\n".join(
        f"{a:.4f},{c:.4f},{e:.4f}" for a, _, c, e in
        np.column_stack([cur, rng.normal(size=2000)])) + "\n")
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--json", "-"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    assert out["absent"] == ["f1", "prediction"] and out["ignored"] == ["extra"]
    assert [f["name"] for f in out["features"]] == ["f0", "f2"]
    assert out["drift"] is False and out["multivariate"] == [] and out["tests"] == 2
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv")], env={"COLUMNS": "200"})
    assert "absent from the current file" in res.output and "f1, prediction" in res.output
    assert "not in the reference (not tested): extra" in res.output
    assert "no drift" in res.output
