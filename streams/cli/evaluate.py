"""``driftline evaluate``: the streaming engine, offline, on two data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from driftline.detectors.errors import DriftlineError, InputError
from driftline.detectors.offline import Report, compare, profile_table, replay
from driftline.detectors.reference import ReferenceProfile
from driftline.detectors.segments import canonical
from driftline.detectors.tables import read_table
from driftline.streams.cli.options import output_file, significance
from driftline.streams.cli.terminal import shown


def _load_reference(path: Path, model: str) -> ReferenceProfile:
    if path.suffix == ".json":
        return ReferenceProfile.from_json(path.read_bytes())
    return profile_table(model, read_table(path), source=str(path))


def evaluate(
    reference: Path = typer.Option(
        ..., "--reference", "-r", help="CSV/Parquet/NPZ file, or a reference profile JSON"),
    current: Path = typer.Option(..., "--current", "-c", help="CSV/Parquet/NPZ file to test"),
    window: int | None = typer.Option(
        None, "--window", "-w", min=2, help="replay CURRENT as a stream with this window (rows)"),
    json_out: Path | None = typer.Option(None, "--json", callback=output_file,
                                         help="write the JSON report here ('-' for stdout)"),
    alpha: float = typer.Option(0.05, callback=significance,
                                help="family-wise significance of the two-sample mode"),
    model: str = typer.Option("offline", help="model name in the report"),
) -> None:
    """Compare CURRENT against REFERENCE with the same engine the workers run.

    Without --window: one two-sample test per column at family-wise ALPHA (Bonferroni);
    with segment_<key> columns, each segment is tested too, on half of ALPHA.
    With --window N: CURRENT is replayed as a stream; each alert reports the 0-based
    row index at which it fired, with the calibrated false-alarm target.
    """
    try:
        ref = _load_reference(reference, model)
        cur = read_table(current)
        if not any(n in cur.features for n in ref.feature_names) and not (
                ref.prediction is not None and cur.prediction is not None):
            names = ", ".join(shown(n) for n in ref.feature_names[:10])
            raise InputError(f"{current}: no column of the reference ({names}"
                             f"{', ...' if len(ref.feature_names) > 10 else ''}) is in it; "
                             "nothing to test")
        report = replay(ref, cur, window=window) if window else compare(ref, cur, alpha=alpha)
    except DriftlineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    data = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    if json_out is not None and str(json_out) == "-":
        typer.echo(data.decode())
    else:
        if json_out is not None:
            json_out.write_bytes(data)
        _print(report)
    raise typer.Exit(0)


def _print(report: Report) -> None:
    console = Console()
    table = RichTable(title=f"driftline evaluate ({report.mode}): "
                      f"{report.n_current} rows vs reference of {report.n_reference}")
    for col in ("feature", "kind", "drift", "chi2", "threshold", "p-value", "PSI", "JS", "KS"):
        table.add_column(col, justify="left" if col in ("feature", "kind") else "right",
                         overflow="fold")  # a narrow or piped terminal: wrapped, never cut
    for f in sorted(report.features, key=lambda f: f.p_value):
        table.add_row(
            shown(f.name), f.kind, "[bold red]DRIFT[/]" if f.drift
            else "n/a" if report.insufficient else "ok", f"{f.score:.1f}",
            f"{f.threshold:.1f}", f"{f.p_value:.2e}", f"{f.psi:.3f}", f"{f.js:.3f}",
            "" if f.ks is None else f"{f.ks:.3f}",
        )
    console.print(table)
    if report.absent:
        console.print("absent from the current file (not tested, nor the multivariate "
                      "statistics, which need every column): "
                      + ", ".join(shown(n) for n in report.absent))
    if report.ignored:
        console.print("not in the reference (not tested): "
                      + ", ".join(shown(n) for n in report.ignored))
    if report.multivariate:
        console.print(_multivariate_table(report))
    _print_segments(console, report.segments, "segments' last windows"
                    if report.mode == "stream" else "segments")
    for a in report.alerts:
        feats = ", ".join(shown(f) for f in a["features"])
        seg = a.get("segment")
        where = f" in segment {shown(canonical(seg))}" if seg else ""
        console.print(f"row {a['index']}: {a['kind']} drift {a['state']}{where} — {feats}")
    if report.insufficient and not report.drift:
        held = ("no window closed" if report.window_events is None
                else f"the last window held {report.window_events} events")
        console.print(f"verdict: [yellow]insufficient data[/] ({held}; a window needs "
                      f"{report.min_samples}: a longer file or a smaller --window)")
        return
    verdict = "[bold red]drift detected[/]" if report.drift else "[green]no drift[/]"
    console.print(f"verdict: {verdict}")


def _print_segments(console: Console, segments: list[dict[str, Any]], title: str,
                    shown_at_most: int = 20) -> None:
    """Drifted segments first (the JSON has every one), then the untested count."""
    if not segments:
        return
    drifted = [s for s in segments if s["drift"]]
    small = sum(s["insufficient"] for s in segments)
    console.print(f"{title}: {len(segments) - small} tested, {len(drifted)} drifted"
                  + (f", {small} with too few rows to test" if small else ""))
    for s in sorted(drifted, key=lambda s: s["p_min"])[:shown_at_most]:
        console.print(f"  segment {shown(canonical(s['segment']))} ({s['rows']} rows): "
                      f"[bold red]drift[/] in {', '.join(shown(n) for n in s['drifted'])}")
    if len(drifted) > shown_at_most:
        console.print(f"  ... {len(drifted) - shown_at_most} more in the JSON report")


def _num(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _multivariate_table(report: Report) -> RichTable:
    """The multivariate statistics of the window with what explains each of them."""
    table = RichTable(title=f"multivariate statistics ({report.tests} tests in the family)")
    for col in ("statistic", "drift", "score", "threshold", "p-value", "explained by"):
        table.add_column(col, justify="left" if col in ("statistic", "explained by") else "right")
    for s in report.multivariate:
        groups: dict[str, list[str]] = {}
        for c in s["top"]:
            groups.setdefault(c["statistic"], []).append(c["name"])
        top = shown("; ".join(f"{', '.join(names)} ({stat})" for stat, names in groups.items()))
        table.add_row(s["name"], "[bold red]DRIFT[/]" if s["drift"] else "ok",
                      _num(s["score"], ".3g"), _num(s["threshold"], ".3g"),
                      _num(s["p_value"], ".2e"), top)
    return table
