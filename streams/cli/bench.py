"""``driftline bench``: measured ratios against baselines, written as JSON + Markdown + PNG."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer

app = typer.Typer(help="Benchmarks against baselines in the same run.", no_args_is_help=True)


def _show(data: dict[str, object]) -> None:
    typer.echo(orjson.dumps({k: v for k, v in data.items() if k != "machine"},
                            option=orjson.OPT_INDENT_2, default=str).decode())


@app.command("detectors")
def detectors(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    events: int = typer.Option(200_000, help="events in the stream"),
    quick: bool = typer.Option(False, help="smaller samples (CI smoke run)"),
) -> None:
    """Per-event-feature cost: pane histograms vs river, alibi-detect, scipy."""
    from driftline.benchmarks.detectors import run

    _show(run(events=events, json_out=json_out, quick=quick))


@app.command("quality")
def quality(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    events: int = typer.Option(1_000_000, help="no-drift events for driftline's false-alarm rate"),
    quick: bool = typer.Option(False, help="smaller samples (CI smoke run)"),
) -> None:
    """False alerts per million events and detection delays vs river and scipy."""
    from driftline.benchmarks.quality import run

    _show(run(events=events, json_out=json_out, quick=quick))
