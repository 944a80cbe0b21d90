"""``driftline investigate``: which features of a model (or segment) drifted, since when, why."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from driftline.detectors.errors import DriftlineError
from driftline.streams.admin import UnknownTopicError
from driftline.streams.cli.options import output_file, significance
from driftline.streams.cli.terminal import shown
from driftline.streams.investigation import (
    Investigation,
    analyse,
    gather,
    parse_segment,
    parse_since,
    relative_time,
)
from driftline.streams.settings import Settings


def investigate(
    model: str = typer.Option(..., "--model", "-m", help="model id"),
    segment: list[str] = typer.Option(
        [], "--segment", "-s", help="key=value; repeat for several keys (events must match all)"),
    since: str | None = typer.Option(
        None, help="2h, 30m, 1d, epoch seconds or an ISO-8601 time, naive = UTC (default: all)"),
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers"),
    html: Path | None = typer.Option(None, "--html", callback=output_file,
                                     help="write a self-contained HTML report"),
    json_out: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    pane_size: int = typer.Option(500, min=20, help="events per pane of the change-point series"),
    alpha: float = typer.Option(0.05, callback=significance,
                                help="family-wise significance of the feature tests"),
    timeout: float = typer.Option(60.0, help="seconds to read each topic to its end"),
    max_events: int = typer.Option(1_000_000, min=1, help="keep at most the newest N events"),
) -> None:
    """Read a model's events, reference and change events from Kafka and explain its drift."""
    s = Settings(bootstrap_servers=bootstrap) if bootstrap else Settings()
    try:
        seg = parse_segment(segment)
        start = parse_since(since) if since else None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        reference, batches, changes, bad = gather(
            s.kafka(), inference_topic=s.inference_topic, references_topic=s.references_topic,
            changes_topic=s.changes_topic, model=model, segment=seg, since=start,
            timeout=timeout, max_events=max_events, key=s.signing_key())
    except UnknownTopicError as exc:
        typer.echo(f"error: {exc} (is a worker running against this cluster?)", err=True)
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except DriftlineError as exc:
        typer.echo(f"error: the reference of {model} is not usable: {exc}", err=True)
        raise typer.Exit(1) from None
    if reference is None:
        typer.echo(f"error: no reference for model {model!r} on {s.references_topic}", err=True)
        raise typer.Exit(1)
    inv = analyse(reference, batches, changes, segment=seg, since=start, pane_size=pane_size,
                  alpha=alpha)
    if html is not None:
        from driftline.streams.report_html import render_html

        html.write_text(render_html(inv), encoding="utf-8")
    if json_out:
        d = inv.to_dict()
        d["undecodable_messages"] = bad
        typer.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        _print(inv, html)
    raise typer.Exit(0)


def _print(inv: Investigation, html: Path | None) -> None:
    console = Console()
    seg = ", ".join(f"{k}={v}" for k, v in inv.segment.items()) or "all events"
    console.print(f"[bold]{shown(inv.model)}[/] ({shown(seg)}): {inv.n_events} events "
                  f"vs reference {shown(inv.reference_id)} ({inv.n_reference} rows)")
    if not inv.n_events:
        console.print("no events in range")
        return
    table = RichTable()
    for col in ("column", "kind", "drift", "chi2", "threshold", "p-value", "PSI", "JS", "KS"):
        table.add_column(col, justify="left" if col in ("column", "kind") else "right",
                         overflow="fold")  # a narrow or piped terminal: wrapped, never cut
    for f in inv.features[:15]:
        table.add_row(shown(f.name), f.kind, "[bold red]DRIFT[/]" if f.drift else "ok",
                      f"{f.score:.1f}", f"{f.threshold:.1f}", f"{f.p_value:.2e}", f"{f.psi:.3f}",
                      f"{f.js:.3f}", "" if f.ks is None else f"{f.ks:.3f}")
    console.print(table)
    if inv.prediction is not None:
        console.print("prediction: " + ("[bold red]shifted[/]" if inv.prediction.drift
                                         else "no shift"))
    cp = inv.change_point
    if cp is not None:
        word = "started around" if cp["significant"] else "no clear start; best guess"
        console.print(f"{word} pane {cp['pane']} (ts {cp['ts']}, offset {cp['offset']}) on "
                      f"{shown(cp['feature'])}, CUSUM {cp['statistic']:.1f}")
    for c in inv.changes[:5]:
        console.print(f"  {relative_time(c['seconds_before'])}: {shown(str(c.get('kind')))} — "
                      f"{shown(str(c.get('text', '')))}")
    if html is not None:
        console.print(f"report: {html}")
