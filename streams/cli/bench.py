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
    """Per-event-feature cost: pane histograms (per-column, and with the multivariate
    statistics) vs river, alibi-detect, scipy."""
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
    events: int | None = typer.Option(None, help="events per topic (default 300,000; quick 30,000)"),
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers (default: embedded broker)"),
    baselines: str = typer.Option("raw,faust,quix,bytewax",
                                  help="baselines to run, comma-separated ('none' for driftline only)"),
    faust_events: int = typer.Option(40_000, help="events the Faust agent reads (it is slow)"),
    profile: Path | None = typer.Option(None, help="run the driftline workers under py-spy; "
                                        "stacks and a summary go to this folder"),
    columns: bool = typer.Option(
        False, help="also run the worker on the other envelope forms (JSON columns, rows)"),
    checks: bool = typer.Option(
        False, help="also run the envelope worker with the optional checks off, with "
        "every prediction kept for labels, and with two models' shadow candidates (every "
        "check; labels + segments + shadow only): what the checks cost end to end"),
    repeats: int = typer.Option(3, min=1, help="rounds of every consumer; each counts with its "
                                "fastest round (quick: 1)"),
    quick: bool = typer.Option(False, help="small data set (CI smoke run)"),
) -> None:
    """Worker events/s (envelopes, single events) vs raw, Faust, Quix Streams, Bytewax."""
    from driftline.benchmarks.baselines.harness import BenchError
    from driftline.benchmarks.throughput import run

    n = events if events is not None else (30_000 if quick else 300_000)
    try:
        data = run(events=n, json_out=json_out, bootstrap=bootstrap,
                   baselines=_baselines(baselines),
                   faust_events=min(faust_events, 10_000) if quick else faust_events, quick=quick,
                   profile=profile, columns=columns, checks=checks,
                   repeats=1 if quick else repeats)
    except BenchError as exc:
        typer.echo(f"benchmark failed: {exc}", err=True)
        raise typer.Exit(1) from None
    _show({k: v for k, v in data.items() if k not in ("details", "data", "profiles")})


@app.command("scaling")
def scaling(
    workers: str = typer.Option("1,2", help="worker counts to run, comma-separated"),
    events: int | None = typer.Option(None, help="events produced (default 1,200,000; quick 20,000)"),
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers (default: embedded broker)"),
    envelopes: bool = typer.Option(False, help="SDK envelopes instead of single events"),
    bytewax: bool = typer.Option(True, help="run Bytewax with 1 and 2 processes for comparison"),
    repeats: int = typer.Option(1, min=1, help="rounds of every configuration; each counts "
                                "with its fastest round"),
    quick: bool = typer.Option(False, help="small data set (CI smoke run)"),
) -> None:
    """Events/s of 1, 2, ... workers in one group; events lost/duplicated; vs Bytewax."""
    from driftline.benchmarks.baselines.harness import BenchError
    from driftline.benchmarks.scaling import run

    try:
        counts = tuple(int(w) for w in workers.split(",") if w.strip())
    except ValueError:
        raise typer.BadParameter("--workers takes counts like 1,2") from None
    n = events if events is not None else (20_000 if quick else 1_200_000)
    try:
        data = run(workers=counts, events=n, json_out=json_out, bootstrap=bootstrap,
                   envelopes=envelopes, bytewax=bytewax, quick=quick,
                   repeats=1 if quick else repeats)
    except BenchError as exc:
        typer.echo(f"benchmark failed: {exc}", err=True)
        raise typer.Exit(1) from None
    _show({k: v for k, v in data.items() if k not in ("runs", "data")})


@app.command("sdk")
def sdk(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    emits: int | None = typer.Option(None, help="emit() calls per phase (default 100,000)"),
    rate: float = typer.Option(20_000.0, help="events/s of the paced and stalled phases"),
    pause: float = typer.Option(5.0, help="seconds the broker is stopped (SIGSTOP)"),
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers (no pause phase then)"),
    quick: bool = typer.Option(False, help="fewer emits (CI smoke run)"),
) -> None:
    """Producer SDK emit() latency p50/p99/max, broker up and broker stalled."""
    from driftline.benchmarks.baselines.harness import BenchError
    from driftline.benchmarks.sdk import run

    n = emits if emits is not None else (10_000 if quick else 100_000)
    try:
        data = run(emits=n, json_out=json_out, bootstrap=bootstrap, rate=rate,
                   pause_s=min(pause, 2.0) if quick else pause, quick=quick)
    except BenchError as exc:
        typer.echo(f"benchmark failed: {exc}", err=True)
        raise typer.Exit(1) from None
    _show(data)


@app.command("overhead")
def overhead(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    events: int = typer.Option(5000, help="timed events per model and form"),
    repeats: int = typer.Option(3, help="runs per setting (the best counts)"),
    forms: str = typer.Option("envelope packed,envelope rows,envelope columns,single events",
                              help="message forms to run, comma-separated"),
    envelopes_per_batch: int = typer.Option(
        10, min=1, help="envelopes (500 events each) per processed batch; a worker reading "
        "a backlog takes ~100"),
    quick: bool = typer.Option(False, help="small data set (CI smoke run)"),
) -> None:
    """CPU µs per event of segments, data quality, labels and shadow mode, each alone and
    all on, vs everything off (same messages, in this process); decode vs the baselines'."""
    from driftline.benchmarks.overhead import FORMS, run

    chosen = tuple(f.strip() for f in forms.split(",") if f.strip())
    if not chosen or set(chosen) - set(FORMS):
        raise typer.BadParameter(f"--forms takes some of: {', '.join(FORMS)}")
    data = run(events_per_model=min(events, 2000) if quick else events,
               repeats=1 if quick else repeats, json_out=json_out, quick=quick,
               progress=lambda line: typer.echo(line, err=True),
               forms=chosen, envelopes_per_batch=envelopes_per_batch)
    _show(data)
