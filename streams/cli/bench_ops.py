"""``driftline bench`` commands about reliability: recovery, memory, soak, fuzz."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer


def _show(data: dict[str, object]) -> None:
    slim = {k: v for k, v in data.items() if k not in ("machine", "samples")}
    typer.echo(orjson.dumps(slim, option=orjson.OPT_INDENT_2, default=str).decode())


def recovery(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    quick: bool = typer.Option(False, help="smaller runs, 10 s stall"),
    bootstrap: str | None = typer.Option(None, help="use this Kafka instead (no stall scenario)"),
) -> None:
    """kill -9, rebalance and stalled-broker scenarios: lost / applied twice / recovery time."""
    from driftline.benchmarks.recovery import run

    data = run(json_out=json_out, quick=quick, bootstrap=bootstrap)
    _show(data)
    if not data["exact"]:
        raise typer.Exit(1)


def memory(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    models: int = typer.Option(1000, help="models with full windows (20 features)"),
) -> None:
    """RSS and snapshot size per model."""
    from driftline.benchmarks.soak import memory as run

    _show(run(models=models, json_out=json_out))


def soak(
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
    minutes: float = typer.Option(2.0, help="how long to run"),
    rate: int = typer.Option(2000, help="events/s in total"),
    models: int = typer.Option(10, help="models"),
) -> None:
    """RSS, lag and throughput over time with steady traffic."""
    from driftline.benchmarks.soak import soak as run

    _show(run(minutes=minutes, rate=rate, models=models, json_out=json_out))


def fuzz(
    n: int = typer.Option(1_000_000, "--n", help="generated inputs"),
    json_out: Path | None = typer.Option(None, "--json", help="JSON output file"),
) -> None:
    """Generated hostile inputs through every decoder: never an uncaught exception."""
    from driftline.benchmarks.fuzz import run

    _show(run(n, json_out))


COMMANDS = {"recovery": recovery, "memory": memory, "soak": soak, "fuzz": fuzz}
