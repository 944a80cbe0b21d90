"""`driftline evaluate` on files a user writes by hand, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
from typer.testing import CliRunner

from driftline.detectors.segments import canonical
from driftline.streams.cli.main import app


def write_csv(path: Path, x: np.ndarray, cat: list[str], pred: np.ndarray) -> None:
    lines = ["age,income,plan,prediction"]
    for i in range(len(x)):
        lines.append(f"{x[i, 0]:.3f},{x[i, 1]:.2f},{cat[i]},{pred[i]:.4f}")
    path.write_text("\n".join(lines) + "\n")


def test_two_sample_mode_flags_the_drifted_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = np.column_stack([rng.normal(40, 10, 3000), rng.lognormal(10, 0.5, 3000)])
    cur = np.column_stack([rng.normal(40, 10, 2000), rng.lognormal(10.3, 0.5, 2000)])
    plans = ["basic", "pro", "team"]
    write_csv(tmp_path / "ref.csv", ref, [plans[i % 3] for i in range(3000)], rng.random(3000))
    write_csv(tmp_path / "cur.csv", cur, [plans[i % 3] for i in range(2000)], rng.random(2000))
    res = CliRunner().invoke(app, ["evaluate", "--reference", str(tmp_path / "ref.csv"),
                                   "--current", str(tmp_path / "cur.csv"),
                                   "--json", str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    assert "income" in res.output and "DRIFT" in res.output
    out = orjson.loads((tmp_path / "out.json").read_bytes())
    by = {f["name"]: f for f in out["features"]}
    assert out["drift"] is True
    assert by["income"]["drift"] is True and by["income"]["score"] > by["income"]["threshold"]
    assert by["age"]["drift"] is False and by["plan"]["drift"] is False
    assert by["prediction"]["drift"] is False
    assert set(by["age"]) >= {"name", "drift", "statistic", "score", "threshold"}
    assert out["alerts"] == []


def test_stream_mode_reports_the_row_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref = np.column_stack([rng.normal(0, 1, 5000), rng.normal(5, 2, 5000)])
    cur = np.column_stack([rng.normal(0, 1, 8000), rng.normal(5, 2, 8000)])
    cur[5000:, 0] += 1.0
    write_csv(tmp_path / "ref.csv", ref, ["a"] * 5000, rng.random(5000))
    write_csv(tmp_path / "cur.csv", cur, ["a"] * 8000, rng.random(8000))
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--window", "1000", "--json", "-"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    firing = [a for a in out["alerts"] if a["state"] == "firing"]
    assert firing and firing[0]["features"][0] == "age"
    assert firing[0]["kind"] == "data"
    assert 5000 <= firing[0]["index"] < 6000


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "nope.csv"), "-c",
                                   str(tmp_path / "nope.csv")])
    assert res.exit_code == 2
    assert "no such file" in res.output


def test_module_entry_point_runs() -> None:
    res = subprocess.run([sys.executable, "-m", "driftline.streams", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "evaluate" in res.stdout


def test_stream_mode_names_the_segment_of_a_segment_alert(tmp_path: Path) -> None:
    """Drift in one region only: its alert carries that segment, and the feature table
    and multivariate statistics stay the whole model's window."""
    rng = np.random.default_rng(3)
    regions = np.array(["eu", "us"])

    def write(path: Path, n: int, shift_eu_from: int | None) -> None:
        x = np.column_stack([rng.normal(0, 1, n), rng.normal(5, 2, n), rng.normal(0, 1, n)])
        region = regions[rng.integers(0, 2, n)]
        if shift_eu_from is not None:
            x[shift_eu_from:, 0] += np.where(region[shift_eu_from:] == "eu", 1.5, 0.0)
        lines = ["f0,f1,f2,segment_region"]
        lines += [f"{a:.4f},{b:.4f},{c:.4f},{r}" for (a, b, c), r in zip(x, region, strict=True)]
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "ref.csv", 6000, None)
    write(tmp_path / "cur.csv", 12000, 6000)
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--window", "2000", "--json",
                                   str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    out = orjson.loads((tmp_path / "out.json").read_bytes())
    firing = [a for a in out["alerts"] if a["state"] == "firing"]
    eu = [a for a in firing if a["segment"] == {"region": "eu"}]
    assert eu and eu[0]["features"][0] == "f0" and eu[0]["index"] >= 6000
    assert not [a for a in firing if a["segment"] == {"region": "us"}]
    assert all("segment" in a for a in out["alerts"])
    # the whole model's window: per-column KS and the multivariate statistics are there
    assert {f["name"] for f in out["features"]} == {"f0", "f1", "f2"}
    assert all(f["ks"] is not None for f in out["features"])
    assert out["multivariate"]
    assert "in segment region=eu" in res.output
    # each segment's last window, with the keys of the two-sample mode's list
    segs = {canonical(x["segment"]): x for x in out["segments"]}
    assert set(segs) == {"region=eu", "region=us"}
    assert segs["region=eu"]["drift"] and segs["region=eu"]["drifted"][0] == "f0"
    assert not segs["region=us"]["drift"] and segs["region=us"]["drifted"] == []
    for x in segs.values():
        assert set(x) == {"segment", "rows", "alpha", "insufficient", "drift", "drifted",
                          "p_min"}
        assert 500 < x["rows"] <= 2000 and not x["insufficient"] and 0 < x["alpha"] < 0.05
    assert "segments' last windows: 2 tested, 1 drifted" in res.output


def _segmented_csv(path: Path, rng: np.random.Generator, sizes: dict[str, int],
                   shift: dict[str, float]) -> None:
    lines = ["f0,f1,plan,segment_region"]
    for region, n in sizes.items():
        x = np.column_stack([rng.normal(shift.get(region, 0.0), 1, n), rng.normal(5, 2, n)])
        plan = rng.choice(["basic", "pro"], n)
        lines += [f"{a:.4f},{b:.4f},{p},{region}" for (a, b), p in zip(x, plan, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_two_sample_mode_tests_each_segment(tmp_path: Path) -> None:
    """Drift in one region of three: that segment is flagged with its column, the others
    are not, and a segment too small for the chi-square test is listed, not tested."""
    rng = np.random.default_rng(11)
    sizes = {"eu": 1500, "us": 1500, "apac": 1500, "lab": 40}
    _segmented_csv(tmp_path / "ref.csv", rng, sizes, {})
    _segmented_csv(tmp_path / "cur.csv", rng, sizes, {"eu": 0.4})
    res = CliRunner().invoke(app, ["evaluate", "-r", str(tmp_path / "ref.csv"), "-c",
                                   str(tmp_path / "cur.csv"), "--json", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    out = orjson.loads((tmp_path / "o.json").read_bytes())
    by = {s["segment"]["region"]: s for s in out["segments"]}
    assert by["eu"]["drift"] is True and by["eu"]["drifted"][0] == "f0"
    assert by["us"]["drift"] is False and by["apac"]["drift"] is False
    assert by["lab"]["insufficient"] is True and by["lab"]["p_min"] is None
    assert by["eu"]["rows"] == 1500
    # the segments share half the level in proportion to their rows
    assert abs(sum(s["alpha"] for s in out["segments"]) - 0.025) < 1e-12
    assert out["drift"] is True
    assert "segments: 3 tested, 1 drifted, 1 with too few rows to test" in res.output
    assert "segment region=eu (1500 rows): drift in f0" in res.output


def test_two_sample_segments_stay_quiet_without_drift(tmp_path: Path) -> None:
    """25 seeded no-drift comparisons with ten segments: the report-wide false-alarm rate
    stays at the family-wise 0.05 (at most 4 of 25 allowed; testing each segment at the
    full level would give about 10)."""
    from driftline.detectors.offline import compare, profile_table
    from driftline.detectors.tables import read_table

    sizes = {f"r{i}": 300 + 100 * i for i in range(10)}
    alarms = 0
    for seed in range(25):
        rng = np.random.default_rng(1000 + seed)
        _segmented_csv(tmp_path / "ref.csv", rng, sizes, {})
        _segmented_csv(tmp_path / "cur.csv", rng, sizes, {})
        ref = profile_table("m", read_table(tmp_path / "ref.csv"))
        report = compare(ref, read_table(tmp_path / "cur.csv"))
        assert len(report.segments) == 10 and not any(s["insufficient"] for s in report.segments)
        alarms += report.drift
    assert alarms <= 4


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 2))
    write_csv(tmp_path / "ref.csv", x, ["a"] * 600, rng.random(600))
    write_csv(tmp_path / "cur.csv", x + 3.0, ["a"] * 600, rng.random(600))  # drifted
    return tmp_path / "ref.csv", tmp_path / "cur.csv"


def test_unreadable_files_are_exit_2_with_the_reason(tmp_path: Path) -> None:
    ref, _ = _files(tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "latin1.csv").write_bytes("age,income\n1,caf\xe9\n".encode("latin-1"))
    (tmp_path / "events.jsonl").write_text('{"age": 1, "income": 2}\n{"age": 3, "income": 4}\n')
    (tmp_path / "adir").mkdir()
    for name, says in (("bad.parquet", "bad.parquet"), ("bad.npz", "bad.npz"),
                       ("latin1.csv", "not UTF-8"), ("events.jsonl", ".jsonl files are not read"),
                       ("adir", "a directory")):
        res = CliRunner().invoke(app, ["evaluate", "-r", str(ref), "-c", str(tmp_path / name)])
        assert res.exit_code == 2, (name, res.output)
        assert says in res.output and "Traceback" not in res.output, (name, res.output)


def test_a_file_without_any_reference_column_is_no_verdict(tmp_path: Path) -> None:
    """Renamed columns test nothing: exit 2 naming the reference's columns, not "no drift"."""
    ref, _ = _files(tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n" + "1,2\n" * 50)
    for extra in ([], ["--window", "10"]):
        res = CliRunner().invoke(app, ["evaluate", "-r", str(ref), "-c",
                                       str(tmp_path / "other.csv"), *extra])
        assert res.exit_code == 2 and "no column of the reference" in res.output, res.output
        assert "no drift" not in res.output


def _said(output: str) -> str:
    """The words of a (possibly boxed and wrapped) error message."""
    return " ".join(output.replace("│", " ").split())


def test_alpha_and_output_path_are_checked_before_any_work(tmp_path: Path) -> None:
    ref, cur = _files(tmp_path)
    for alpha in ("nan", "0", "-0.1", "1", "1.5", "inf"):
        res = CliRunner().invoke(app, ["evaluate", "-r", str(ref), "-c", str(cur),
                                       "--alpha", alpha])
        assert res.exit_code == 2 and "significance level" in _said(res.output), alpha
    res = CliRunner().invoke(app, ["evaluate", "-r", str(ref), "-c", str(cur),
                                   "--json", str(tmp_path / "no" / "such" / "out.json")])
    assert res.exit_code == 2 and "is no directory" in _said(res.output), res.output
    res = CliRunner().invoke(app, ["evaluate", "-r", str(ref), "-c", str(cur), "--alpha", "0.01"])
    assert res.exit_code == 0 and "drift detected" in res.output, res.output
