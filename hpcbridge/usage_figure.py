"""The picture of allocated against used, per resource and per job, for the notebook (pure: figures in, markup out).

One row per job, one bar per resource (CPU, memory, time, GPU): the bar's full length is what was allocated, the
filled part what was used, with both figures beside it. Drawn with matplotlib when it is installed (as inline SVG),
else as plain SVG: nothing to install for the picture.
"""

from __future__ import annotations

import html
import importlib
import io
from typing import Any, List, Optional, Sequence, Tuple

from .advice import gb, hms, node_peak_gb
from .usage import Usage

RESOURCES = ("CPU", "memory", "time", "GPU")
#: used colour per resource; the allocated part is grey
COLOURS = {"CPU": "#0b5cad", "memory": "#8250df", "time": "#1a7f37", "GPU": "#bc4c00"}
ALLOCATED = "#d0d7de"
MAX_JOBS = 20

Bar = Tuple[str, Optional[float], str]  # resource, used fraction of allocated (None: unknown), label


def bars(usage: Usage) -> List[Bar]:
    """The bars of one job: resource, used/allocated (None when unknown), and the figures as text."""
    out: List[Bar] = []
    elapsed = usage.elapsed_s or 0.0
    if usage.cpus and elapsed and usage.cpu_time_s is not None:
        busy = usage.cpu_time_s / elapsed
        out.append(("CPU", busy / usage.cpus, f"{busy:.2f} of {usage.cpus} CPUs busy"))
    else:
        out.append(("CPU", None, "ran under a second" if usage.elapsed_s == 0 else "no CPU time figure"))
    peak = node_peak_gb(usage)
    if usage.mem_gb and peak is not None:
        per_node = usage.mem_gb / max(1, usage.nodes)  # peak_mem_gb is one node's; mem_gb the job's
        out.append(("memory", peak / per_node, f"peak {gb(peak)} of {gb(per_node)} GB"
                    + (" per node" if usage.nodes > 1 else "")))
    else:
        out.append(("memory", None, "no memory figure"))
    if usage.walltime_s and usage.elapsed_s is not None:
        out.append(("time", elapsed / usage.walltime_s, f"{hms(elapsed)} of {hms(usage.walltime_s)}"))
    else:
        out.append(("time", None, "no walltime"))
    if usage.gpus:
        util = usage.gpu_utilization
        out.append(("GPU", util, "no GPU data" if util is None else f"{util * 100:.0f}% busy of {usage.gpus} GPU"))
    return out


def usage_figure(jobs: Sequence[Tuple[str, Usage]], prefer_matplotlib: bool = True) -> str:
    """The picture as HTML: matplotlib's SVG when it imports (and ``prefer_matplotlib``), else plain SVG."""
    jobs = list(jobs)[:MAX_JOBS]
    if not jobs:
        return ""
    if prefer_matplotlib:
        try:
            plt = importlib.import_module("matplotlib.pyplot")
        except ImportError:
            plt = None
        if plt is not None:
            return matplotlib_figure(jobs, plt)
    return svg_figure(jobs)


def shown_resources(jobs: Sequence[Tuple[str, Usage]]) -> Tuple[str, ...]:
    """The resources drawn: GPU only when a job was given GPUs."""
    return tuple(r for r in RESOURCES if r != "GPU" or any(u.gpus for _, u in jobs))


def svg_figure(jobs: Sequence[Tuple[str, Usage]]) -> str:
    """A plain SVG: for each job a label, then a bar per resource (grey: allocated, coloured: used)."""
    bar_w, label_w, text_w, row_h, gap = 160, 90, 170, 14, 6
    col_w = bar_w + text_w
    resources = shown_resources(jobs)
    width = label_w + col_w * len(resources)
    parts: List[str] = []
    for i, name in enumerate(resources):
        x = label_w + i * col_w
        parts.append(f'<text x="{x}" y="12" font-weight="600">{name}</text>')
    y = 20
    for label, usage in jobs:
        parts.append(f'<text x="0" y="{y + 11}"><tspan font-family="monospace">{html.escape(label)}</tspan></text>')
        for resource, fraction, text in bars(usage):
            x = label_w + resources.index(resource) * col_w
            parts.append(f'<rect x="{x}" y="{y}" width="{bar_w}" height="{row_h}" fill="{ALLOCATED}">'
                         f"<title>{html.escape(resource)} allocated</title></rect>")
            if fraction is not None:
                used = max(0.0, min(1.0, fraction)) * bar_w
                parts.append(f'<rect x="{x}" y="{y}" width="{used:.1f}" height="{row_h}" '
                             f'fill="{COLOURS[resource]}"><title>{html.escape(resource)} used: '
                             f"{html.escape(text)}</title></rect>")
            parts.append(f'<text x="{x + bar_w + 4}" y="{y + 11}">{html.escape(text)}</text>')
        y += row_h + gap
    height = y + 4
    return (f'<svg class="hpcbridge-usage" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11" role="img" aria-label="allocated against used, per job">'
            f"<title>allocated (grey) against used (colour), per resource and job</title>{''.join(parts)}</svg>")


def matplotlib_figure(jobs: Sequence[Tuple[str, Usage]], plt: Any) -> str:
    """The same picture drawn by matplotlib (``plt``: ``matplotlib.pyplot``), as inline SVG in a ``div``."""
    resources = shown_resources(jobs)
    fig, axes = plt.subplots(1, len(resources), figsize=(3 * len(resources), 0.4 * len(jobs) + 1), sharey=True,
                             squeeze=False)
    labels = [label for label, _ in jobs]
    positions = list(range(len(jobs)))
    for col, resource in enumerate(resources):
        ax = axes[0][col]
        fractions: List[float] = []
        allocated: List[float] = []
        texts: List[str] = []
        for _, usage in jobs:
            found = [b for b in bars(usage) if b[0] == resource]
            fraction, text = (found[0][1], found[0][2]) if found else (None, "none allocated")
            fractions.append(0.0 if fraction is None else max(0.0, min(1.0, fraction)))
            allocated.append(1.0 if found else 0.0)
            texts.append(text)
        ax.barh(positions, allocated, color=ALLOCATED)
        ax.barh(positions, fractions, color=COLOURS[resource])
        for pos, text in zip(positions, texts):
            ax.text(0.02, pos, text, va="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(resource)
        ax.set_xticks([0, 0.5, 1])
        ax.set_xticklabels(["0", "50%", "100%"])
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels(labels)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return f'<div class="hpcbridge-usage">{svg[svg.find("<svg"):]}</div>'


# -- the job tables' efficiency columns ----------------------------------------------------------------------------
EFFICIENCY_COLUMNS = ("CPU", "mem", "time", "GPU")


def known_usage(job: Any) -> Optional[Usage]:
    """A job's usage if it is known already (gathered by ``job.usage()`` or its group's): never a query, a table is
    drawn without waiting; None otherwise."""
    value = getattr(job, "_usage", None)
    return value if isinstance(value, Usage) else None


def efficiency_cells(usage: Optional[Usage]) -> List[str]:
    """CPU, memory, time and GPU efficiency as ``48%`` (``-``: unknown), for one row of a job table."""
    if usage is None:
        return ["", "", "", ""]
    out: List[str] = []
    for resource in EFFICIENCY_COLUMNS:
        found = [b for b in bars(usage) if b[0] == {"mem": "memory"}.get(resource, resource)]
        fraction = found[0][1] if found else None
        out.append("-" if fraction is None else f"{fraction * 100:.0f}%")
    return out
