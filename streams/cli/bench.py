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


def _baselines(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "none")
    return names


@app.command("throughput")
def throughput(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    events: int | None = typer.Option(None, help="events per topic (default 600,000; quick 30,000)"),
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers (default: embedded broker)"),
    baselines: str = typer.Option("raw,faust,quix,bytewax",
                                  help="baselines to run, comma-separated ('none' for driftline only)"),
    faust_events: int = typer.Option(120_000, help="events the Faust agent reads (it is slow)"),
    quick: bool = typer.Option(False, help="small data set (CI smoke run)"),
) -> None:
    """Worker events/s (envelopes, single events) vs raw, Faust, Quix Streams, Bytewax."""
    from driftline.benchmarks.baselines.harness import BenchError
    from driftline.benchmarks.throughput import run

    n = events if events is not None else (30_000 if quick else 600_000)
    try:
        data = run(events=n, json_out=json_out, bootstrap=bootstrap,
                   baselines=_baselines(baselines),
                   faust_events=min(faust_events, 10_000) if quick else faust_events, quick=quick)
    except BenchError as exc:
        typer.echo(f"benchmark failed: {exc}", err=True)
        raise typer.Exit(1) from None
    _show({k: v for k, v in data.items() if k not in ("details", "data")})
