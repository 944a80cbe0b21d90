"""Writing benchmark results: JSON, a Markdown table and (when matplotlib is there) a PNG."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and whether single events were decoded by the
    compiled scanner)."""
    import numpy as np

    from driftline.detectors.join_index import COMPILED
    from driftline.detectors.stats import KERNELS
    from driftline.schemas.codecs import SCANNER

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "single_event_scanner": "compiled" if SCANNER else "python",
        "label_join_index": "compiled" if COMPILED else "dict",
        "window_kernels": "compiled" if KERNELS else "numpy",
    }


def write(
    name: str,
    data: dict[str, Any],
    table: Sequence[Sequence[Any]],
    header: Sequence[str],
    *,
    json_out: Path | None,
    results_dir: Path | None = None,
    plot: tuple[str, list[str], list[float]] | None = None,
) -> Path:
    """Write ``data`` as JSON (``json_out`` or the results dir), a Markdown table and a plot."""
    results_dir = results_dir or Path(os.environ.get("DRIFTLINE_BENCH_RESULTS",
                                                     "benchmarks/results"))
    results_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "machine": machine()}
    out = json_out or results_dir / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    md = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    md += [f"| {' | '.join(_cell(c) for c in row)} |" for row in table]
    m = data["machine"]
    md.append("")
    md.append(f"_{m['date']}, {m['cpu_count']} cores, {m['processor']}, Python {m['python']}, "
              f"numpy {m['numpy']}_")
    (results_dir / f"{name}.md").write_text("\n".join(md) + "\n")
    if plot is not None:
        _plot(results_dir / f"{name}.png", *plot)
    return out


def _cell(c: Any) -> str:
    if isinstance(c, float):
        if c == 0 or 0.01 <= abs(c) < 1e6:
            return f"{c:,.3g}" if abs(c) < 1000 else f"{c:,.0f}"
        return f"{c:.2e}"
    return str(c)


def _plot(path: Path, title: str, labels: list[str], values: list[float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: no plot {path.name} (pip install 'driftline[bench]')")
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
    ax.barh(labels, values)
    ax.set_xscale("log")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
