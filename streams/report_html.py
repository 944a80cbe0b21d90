"""A static, self-contained HTML report of an :class:`~driftline.streams.investigation.Investigation`.

Tables always; plots (per-column histogram and CDF against the reference, and a time
axis with the per-pane statistic, the change point and the change events) as inline
base64 PNG when matplotlib is installed (``pip install 'driftline[bench]'``), otherwise
a note says so. Nothing is loaded from the network.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from driftline.streams.investigation import Investigation, relative_time

NO_PLOTS = "Plots need matplotlib (pip install driftline[bench]); this report has tables only."

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}.drift{color:#b00020;font-weight:600}
.ok{color:#2e7d32}.note{color:#666;font-style:italic}.plots img{max-width:100%}
.card{display:inline-block;margin:.3em 1.2em .3em 0}.card b{font-size:1.3em;display:block}
"""


def _t(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(x: object) -> str:
    return html.escape(str(x))


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    fig.clf()
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _distribution_plot(plt: Any, d: dict[str, Any]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    ref = np.asarray(d["reference_counts"], dtype=float)
    cur = np.asarray(d["current_counts"], dtype=float)
    ref_p, cur_p = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    x = np.arange(ref.size)
    axes[0].bar(x - 0.2, ref_p, 0.4, label="reference", color="#90a4ae")
    axes[0].bar(x + 0.2, cur_p, 0.4, label="current", color="#e53935")
    axes[0].set_title(f"{d['name']}: share per reference bin")
    if d.get("type") == "categorical":
        axes[0].set_xticks(x, [str(c)[:12] for c in d["categories"][: ref.size]], rotation=45)
    axes[0].legend(fontsize=8)
    if d.get("type") == "numeric":
        for key, label, color in (("reference_sample", "reference", "#607d8b"),
                                  ("current_sample", "current", "#e53935")):
            v = np.sort(np.asarray(d[key], dtype=float))
            if v.size:
                axes[1].step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label,
                             color=color)
        axes[1].set_title("empirical CDF")
        axes[1].legend(fontsize=8)
    else:
        axes[1].step(x, np.cumsum(ref_p), where="mid", label="reference", color="#607d8b")
        axes[1].step(x, np.cumsum(cur_p), where="mid", label="current", color="#e53935")
        axes[1].set_title("cumulative share")
        axes[1].legend(fontsize=8)
    out = _png(fig)
    plt.close(fig)
    return out


def _timeline_plot(plt: Any, inv: Investigation) -> str:
    panes = [p for p in inv.panes if p["score"] is not None]
    if not panes:
        return ""
    timed = all(p["start_ts"] is not None for p in panes)
    xs = [p["start_ts"] if timed else p["index"] for p in panes]
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(xs, [p["score"] for p in panes], marker="o", ms=3, color="#1e88e5",
            label=f"chi-square of {inv.top_feature} per pane")
    cp = inv.change_point
    if cp is not None:
        at = cp["ts"] if timed else cp["pane"]
        if at is not None:
            ax.axvline(at, color="#b00020", ls="--", label="change point")
    if timed:
        for c in inv.changes[:10]:
            ax.axvline(c["ts"], color="#fb8c00", ls=":", alpha=0.9)
            ax.annotate(str(c.get("kind", ""))[:16], (c["ts"], ax.get_ylim()[1]), fontsize=7,
                        rotation=90, va="top", color="#e65100")
    ax.set_xlabel("event time (epoch s)" if timed else "pane")
    ax.legend(fontsize=8)
    out = _png(fig)
    plt.close(fig)
    return out


def render_html(inv: Investigation, *, plots: bool = True) -> str:
    """The report as one HTML document (``plots=False`` or no matplotlib: tables only)."""
    plt = _pyplot() if plots else None
    seg = ", ".join(f"{k}={v}" for k, v in inv.segment.items()) or "all events"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<title>driftline investigate: {_e(inv.model)}</title><style>{_CSS}</style>"
             f"</head><body><h1>Drift investigation: {_e(inv.model)} ({_e(seg)})</h1>"]
    verdict = ("<span class='drift'>drift</span>" if inv.drift else "<span class='ok'>no drift</span>")
    cp = inv.change_point
    cards = [("events", f"{inv.n_events:,}"), ("reference", f"{inv.n_reference:,} rows"),
             ("verdict", verdict),
             ("drifted", _e(", ".join(inv.drifted) or "none")),
             ("prediction", "<span class='drift'>shifted</span>" if inv.prediction and
              inv.prediction.drift else "unchanged" if inv.prediction else "n/a"),
             ("change point", _e(_t(cp["ts"])) if cp and cp["significant"] else "none found")]
    parts.append("".join(f"<div class='card'>{k}<b>{v}</b></div>" for k, v in cards))
    if plt is None:
        parts.append(f"<p class='note'>{_e(NO_PLOTS)}</p>")
    parts.append(f"<h2>Features against reference {_e(inv.reference_id)}</h2>"
                 f"<p>Chi-square test per column at family-wise level {inv.alpha} "
                 f"(Bonferroni over {inv.tests} tests).</p><table><tr><th>column</th><th>kind</th>"
                 "<th>verdict</th><th>chi2</th><th>threshold</th><th>p-value</th><th>PSI</th>"
                 "<th>JS</th><th>KS</th></tr>")
    for f in inv.features:
        parts.append(
            f"<tr><td>{_e(f.name)}</td><td>{_e(f.kind)}</td><td class="
            f"{'drift' if f.drift else 'ok'}>{'DRIFT' if f.drift else 'ok'}</td>"
            f"<td>{f.score:.1f}</td><td>{f.threshold:.1f}</td><td>{f.p_value:.2e}</td>"
            f"<td>{f.psi:.3f}</td><td>{f.js:.3f}</td><td>{'' if f.ks is None else f'{f.ks:.3f}'}"
            "</td></tr>")
    parts.append("</table>")
    parts.append("<h2>When it started</h2>")
    if cp is not None:
        parts.append(
            f"<p>Change-point estimate on the per-pane chi-square of <b>{_e(cp['feature'])}</b> "
            f"(panes of {inv.pane_size} events): pane {cp['pane']}, {_e(_t(cp['ts']))}, "
            f"offset {cp['offset']}; standardised CUSUM {cp['statistic']:.1f} "
            f"({'significant' if cp['significant'] else 'not significant'}); mean statistic "
            f"{cp['mean_before']:.1f} before, {cp['mean_after']:.1f} after.</p>")
    else:
        parts.append("<p class='note'>Too few events for a change-point estimate.</p>")
    if plt is not None:
        parts.append(f"<div class='plots'>{_timeline_plot(plt, inv)}</div>")
    parts.append("<h2>Change events before the change point (closest first)</h2>")
    if inv.changes:
        parts.append("<table><tr><th>time</th><th>kind</th><th>before change point</th>"
                     "<th>text</th><th>source</th></tr>")
        for c in inv.changes:
            parts.append(f"<tr><td>{_e(_t(c['ts']))}</td><td>{_e(c.get('kind', ''))}</td>"
                         f"<td>{_e(relative_time(c['seconds_before']))}</td><td>{_e(c.get('text', ''))}</td>"
                         f"<td>{_e(c.get('source') or '')}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='note'>None recorded.</p>")
    parts.append("<h2>Distributions</h2>")
    for d in inv.distributions:
        parts.append(f"<h3>{_e(d['name'])}</h3>")
        if plt is not None:
            parts.append(f"<div class='plots'>{_distribution_plot(plt, d)}</div>")
        else:
            total_r = max(sum(d["reference_counts"]), 1)
            total_c = max(sum(d["current_counts"]), 1)
            parts.append("<table><tr><th>bin</th><th>reference</th><th>current</th></tr>")
            for i, (r, c) in enumerate(zip(d["reference_counts"], d["current_counts"],
                                           strict=True)):
                parts.append(f"<tr><td>{i}</td><td>{r / total_r:.3f}</td>"
                             f"<td>{c / total_c:.3f}</td></tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
