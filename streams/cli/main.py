"""The ``driftline`` command: offline evaluation, workers, producers, alerts, benchmarks."""

from __future__ import annotations

import sys

import typer
from confluent_kafka import KafkaError, KafkaException

from driftline.streams.cli import (
    bench,
    bench_ops,
    evaluate,
    investigate,
    kafka_commands,
    run,
    shadow,
)

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
app.add_typer(shadow.app, name="shadow")


def main() -> None:
    try:
        app()
    except KafkaException as exc:  # e.g. no broker answers at the bootstrap address
        err = exc.args[0] if exc.args else None
        what = err.str() if isinstance(err, KafkaError) else str(exc)
        print(f"error: Kafka: {what} (is a broker reachable at --bootstrap / "
              "DRIFTLINE_BOOTSTRAP_SERVERS?)", file=sys.stderr)
        sys.exit(1)
