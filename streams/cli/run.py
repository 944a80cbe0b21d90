"""Long-running commands: ``broker``, ``worker`` and the one-minute demo ``up``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from prometheus_client import CollectorRegistry
from rich.console import Console

from driftline.detectors.segments import canonical
from driftline.streams.broker import EmbeddedBroker
from driftline.streams.cli.terminal import shown
from driftline.streams.logs import setup_logging
from driftline.streams.metrics import MetricsServer
from driftline.streams.model_config import ModelConfigError
from driftline.streams.producer import DriftlineProducer
from driftline.streams.settings import Settings, unknown_variables
from driftline.streams.synthetic import DriftSpec, SyntheticModels
from driftline.streams.worker import Worker, topic_specs

console = Console(stderr=True)


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _exit_now() -> None:
    raise SystemExit(0)


def broker(
    port: int = typer.Option(9092, help="port to listen on (0: a free one)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    b = EmbeddedBroker(host=host, port=port or None, log_to_terminal=False)
    stopping = threading.Event()
    _on_signals(stopping.set)
    with b:
        typer.echo(f"driftline broker listening on {b.bootstrap} (memory-only; Ctrl-C stops it)")
        while not stopping.wait(0.5):
            if not b.running:
                typer.echo("broker exited unexpectedly:\n" + b.log_tail(), err=True)
                raise typer.Exit(1)


def worker(
    bootstrap: str | None = typer.Option(None, "--bootstrap", "-b",
                                         help="Kafka bootstrap servers (default: settings)"),
    metrics_port: int | None = typer.Option(None, help="port of /metrics and /healthz"),
    duration: float | None = typer.Option(None, help="stop after this many seconds"),
    model_config: Path | None = typer.Option(
        None, "--model-config", help="per-model windows (YAML/JSON; default: "
        "DRIFTLINE_MODEL_CONFIG)"),
    runtime: str | None = typer.Option(
        None, help="kafka (default: the confluent-kafka worker) | faust (agents in a Faust "
                   "app, see README 'Faust runtime'); default: DRIFTLINE_RUNTIME"),
) -> None:
    """Run one worker of the consumer group until SIGTERM/SIGINT."""
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if model_config is not None:
        overrides["model_config_file"] = str(model_config)
    if runtime is not None:
        if runtime not in ("kafka", "faust"):
            raise typer.BadParameter("expected kafka or faust", param_hint="--runtime")
        overrides["runtime"] = runtime
    settings = Settings(**overrides)
    try:
        configs = settings.model_configs()
    except ModelConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings)
    if unknown := unknown_variables(os.environ):
        logging.getLogger("driftline").warning(
            "ignored: %s (no such setting; `driftline config` prints the settings)",
            ", ".join(unknown))
    if settings.runtime == "faust":
        _on_signals(_exit_now)  # a signal while Faust loads: nothing started yet
        from driftline.streams.faust_app import run_worker

        run_worker(settings, duration)
        return
    registry = CollectorRegistry()
    w = Worker(settings, registry, model_configs=configs)
    if configs.models:
        logging.getLogger("driftline").info("model config %s: %d models configured",
                                            configs.source, len(configs.models))
    server = MetricsServer(registry, settings.metrics_host, settings.metrics_port,
                           health=lambda: w.ready).start()
    logging.getLogger("driftline").info("metrics on http://%s:%d/metrics",
                                        settings.metrics_host, server.port)
    _on_signals(w.request_stop)
    try:
        w.run(duration=duration)
    finally:
        server.stop()


def up(
    duration: float | None = typer.Option(
        None, help="stop after S seconds; exit 0 only if an alert was seen"),
    models: int = typer.Option(4, help="demo models"),
    rate: int = typer.Option(2000, help="events/s per model"),
    drift_at: float = typer.Option(20.0, help="seconds until drift is injected"),
    drift_model: str = typer.Option("model-2", help="model that drifts"),
    drift_feature: str = typer.Option("f7", help="feature that drifts"),
    shift: float = typer.Option(1.0, help="drift size in standard deviations"),
    metrics_port: int = typer.Option(0, help="worker /metrics port (0: a free one)"),
) -> None:
    """Embedded broker + worker + demo producer with drift injected: watch an alert appear.

    Each alert that fires is one ``ALERT`` line on stdout; progress goes to stderr."""
    stopping = threading.Event()
    _on_signals(stopping.set)
    t_start = time.monotonic()
    with EmbeddedBroker() as b:
        settings = Settings(bootstrap_servers=b.bootstrap, metrics_port=metrics_port,
                            partitions=4, snapshot_interval_s=2.0, auto_reference_events=5000)
        setup_logging(settings, quiet=True)
        registry = CollectorRegistry()
        seen: list[Any] = []
        w = Worker(settings, registry, on_alert=seen.append)
        server = MetricsServer(registry, "127.0.0.1", metrics_port, health=lambda: w.ready).start()
        thread = threading.Thread(target=w.run, name="driftline-worker", daemon=True)
        from driftline.streams.admin import ensure_topics

        ensure_topics(settings.kafka(), topic_specs(settings))
        thread.start()
        gen = SyntheticModels(models, drift=(DriftSpec(drift_model, drift_feature, drift_at, shift,
                                                       "seconds"),), error_rate=0.001)
        console.print(f"[bold]driftline up[/]: broker {b.bootstrap}, metrics "
                      f"http://127.0.0.1:{server.port}/metrics, {models} models at {rate} ev/s "
                      f"each; {drift_model}.{drift_feature} drifts by {shift}σ after {drift_at:.0f} s")
        producer = DriftlineProducer(b.bootstrap, settings.inference_topic, batch_size=500)
        produced, last_print, step, shown_alerts = 0, 0.0, 0.1, 0
        first_alert: float | None = None
        out = Console(soft_wrap=True)  # alert lines on stdout; progress on stderr
        try:
            next_t = time.monotonic()
            while not stopping.is_set():
                now = time.monotonic()
                if duration is not None and now - t_start >= duration:
                    break
                for m in gen.models:
                    for ev in gen.events(m, max(int(rate * step), 1)):
                        producer.emit_event(ev)
                        produced += 1
                next_t += step
                if now - last_print >= 1.0:
                    last_print = now
                    firing = [a for a in seen if a.state == "firing"]
                    if firing and first_alert is None:
                        first_alert = now - t_start
                    for a in firing[shown_alerts:]:  # each alert once, on stdout
                        sys.stderr.write("\n")
                        out.print(
                            f"[bold red]ALERT[/] {a.kind} drift on [bold]{shown(a.model)}[/]"
                            + (f" segment {shown(canonical(a.segment))}" if a.segment else "")
                            + f" after {now - t_start:.1f} s: feature {shown(a.feature)} "
                            f"{a.statistic}={a.score:.1f} > {a.threshold:.1f} "
                            f"(p={a.p_value:.1e}); top: "
                            + ", ".join(f"{shown(f.name)} ({shown(f.statistic)})"
                                        for f in a.top_features[:3]))
                    shown_alerts = len(firing)
                    st = w.stats
                    elapsed = max(time.time() - st.started, 1e-9)
                    sys.stderr.write(
                        f"\r{now - t_start:5.0f} s  produced {produced:>9,}  applied "
                        f"{st.applied:>9,} ({st.applied / elapsed:,.0f} ev/s)  models "
                        f"{len({s.model for s in w.processor.models.values()})}  alerts {len(firing)}  ")
                    sys.stderr.flush()
                time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            console.print()
            producer.close(5)
            w.request_stop()
            thread.join(15)
            server.stop()
    if duration is not None:
        if first_alert is None:
            console.print("[red]no alert within the duration[/]")
            raise typer.Exit(1)
        out.print(f"[green]first alert after {first_alert:.1f} s[/]")


COMMANDS: dict[str, Callable[..., None]] = {"broker": broker, "worker": worker, "up": up}
