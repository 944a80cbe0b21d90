"""``driftline shadow report``: is a shadow candidate safe to promote?

Reads the workers' status records (compacted status topic): the state of a live model
carries a ``shadow`` summary per candidate (pairs, window agreement, score difference,
distribution distance, whether its ``shadow`` alert is firing). A model's state is kept
per source partition, so the summaries of all its partitions are merged.
"""

from __future__ import annotations

from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from driftline.streams.admin import UnknownTopicError, read_compacted
from driftline.streams.cli.kafka_commands import BootstrapOpt, _settings
from driftline.streams.cli.terminal import shown
from driftline.streams.settings import Settings

app = typer.Typer(help="Shadow (candidate) models paired with their live model.",
                  no_args_is_help=True)
console = Console()

SAFE, DIVERGED, INSUFFICIENT = "safe", "diverged", "insufficient"
_SUMS = ("pairs_total", "window_pairs", "window_comparable", "window_agreeing",
         "unpaired_live", "unpaired_shadow", "pending_live", "pending_shadow")


def merge_summaries(records: list[Any]) -> list[dict[str, Any]]:
    """One row per candidate from the per-partition status records of one live model."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        for s in _readable(r):
            c = out.setdefault(s["candidate"], {
                "candidate": s["candidate"], **dict.fromkeys(_SUMS, 0), "firing": False,
                "_diff": 0.0, "_diff_n": 0, "js": None, "psi": None,
                "min_agreement": s.get("min_agreement"), "min_pairs": s.get("min_pairs")})
            for k in _SUMS:
                c[k] += int(s.get(k) or 0)
            c["firing"] = c["firing"] or bool(s.get("firing"))
            if s.get("score_diff_mean") is not None:
                c["_diff"] += float(s["score_diff_mean"]) * int(s.get("window_pairs") or 0)
                c["_diff_n"] += int(s.get("window_pairs") or 0)
            for k in ("js", "psi"):
                if s.get(k) is not None:
                    c[k] = max(float(s[k]), c[k] or 0.0)
    rows = []
    for c in out.values():
        n = c.pop("_diff_n")
        diff = c.pop("_diff")
        c["score_diff_mean"] = diff / n if n else None
        comparable = c["window_comparable"]
        c["agreement"] = c["window_agreeing"] / comparable if comparable else None
        c["verdict"] = verdict(c)
        rows.append(c)
    return sorted(rows, key=lambda c: c["candidate"])


def _readable(record: object) -> list[dict[str, Any]]:
    """The well-formed shadow summaries of one status record (anyone who can write the
    status topic could put anything there: what does not fit is skipped)."""
    shadow = record.get("shadow") if isinstance(record, dict) else None
    if not isinstance(shadow, list):
        return []
    ok = []
    for s in shadow:
        if not isinstance(s, dict) or not isinstance(s.get("candidate"), str):
            continue
        if not all(isinstance(s.get(k, 0), int) and not isinstance(s.get(k, 0), bool)
                   for k in _SUMS):
            continue
        if not all(s.get(k) is None or (isinstance(s[k], (int, float))
                                        and not isinstance(s[k], bool))
                   for k in ("score_diff_mean", "js", "psi", "min_agreement", "min_pairs")):
            continue
        ok.append(s)
    return ok


def verdict(c: dict[str, Any]) -> str:
    """safe: enough comparable pairs, agreement at or above the bar, no alert firing."""
    min_agreement, min_pairs = c.get("min_agreement") or 0.0, c.get("min_pairs") or 1
    if c["firing"]:
        return DIVERGED
    if c["window_comparable"] < min_pairs or c["agreement"] is None:
        return INSUFFICIENT
    return SAFE if c["agreement"] >= min_agreement else DIVERGED


def shadow_report(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The merged shadow summaries of one live model, from the status topic."""
    try:
        records = read_compacted(settings.kafka(), settings.status_topic, timeout=30)
    except UnknownTopicError:
        records = {}
    rows: list[Any] = []
    for v in records.values():
        try:
            rows.append(orjson.loads(v))
        except orjson.JSONDecodeError:
            continue
    return merge_summaries([r for r in rows if isinstance(r, dict) and r.get("model") == model])


@app.command("report")
def report(
    model: str = typer.Option(..., "--model", "-m", help="the live model"),
    candidate: str | None = typer.Option(None, "--candidate", "-c", help="only this candidate"),
    bootstrap: str | None = BootstrapOpt,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Summarise every shadow candidate of MODEL and whether it is safe to promote.

    Exit status: 0 when every reported candidate is safe, 1 when one diverged,
    2 when there is no candidate or not enough pairs yet.
    """
    everyone = shadow_report(_settings(bootstrap), model)
    rows = everyone if candidate is None else [r for r in everyone
                                                 if r["candidate"] == candidate]
    if as_json:
        typer.echo(orjson.dumps({"model": model, "candidates": rows},
                                option=orjson.OPT_INDENT_2).decode())
    elif not rows:
        typer.echo(f"no shadow candidates reported for {shown(model)}" if not everyone else
                   f"{shown(model)} has no candidate {shown(candidate)} (its candidates: "
                   + ", ".join(shown(r["candidate"]) for r in everyone) + ")")
    else:
        t = RichTable(title=f"shadow candidates of {shown(model)}")
        for col in ("candidate", "verdict", "agreement", "pairs (window)", "pairs total",
                    "score diff", "JS", "unpaired live/shadow"):
            t.add_column(col, overflow="fold")  # names wrapped on a narrow terminal, never cut
        for r in rows:
            color = {"safe": "green", "diverged": "red"}.get(r["verdict"], "yellow")
            t.add_row(shown(r["candidate"]), f"[{color}]{r['verdict']}[/]", _fmt(r["agreement"]),
                      f"{r['window_comparable']:,}", f"{r['pairs_total']:,}",
                      _fmt(r["score_diff_mean"]), _fmt(r["js"]),
                      f"{r['unpaired_live']:,}/{r['unpaired_shadow']:,}")
        console.print(t)
    verdicts = {r["verdict"] for r in rows}
    if DIVERGED in verdicts:
        raise typer.Exit(1)
    if not rows or INSUFFICIENT in verdicts:
        raise typer.Exit(2)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
