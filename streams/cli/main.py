"""The ``driftline`` command: offline evaluation, workers, producers, alerts, benchmarks."""

from __future__ import annotations

import typer

from driftline.streams.cli import bench, bench_ops, evaluate, investigate, kafka_commands, run

app = typer.Typer(
    name="driftline",
    help="Streaming drift detection for ML models over Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("evaluate")(evaluate.evaluate)
app.command("investigate")(investigate.investigate)
for name, fn in bench_ops.COMMANDS.items():
    bench.app.command(name)(fn)
app.add_typer(bench.app, name="bench")
for name, fn in run.COMMANDS.items():
    app.command(name)(fn)
for name, fn in kafka_commands.COMMANDS.items():
    app.command(name)(fn)
app.add_typer(kafka_commands.reference_app, name="reference")
app.add_typer(kafka_commands.slo_app, name="slo")


def main() -> None:
    app()
