"""``retrieval eval --plot``: recall@k curves per rerank method, one panel per direction, as a PNG
(matplotlib) or an interactive HTML page (plotly, when installed). Both are imported lazily."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError


def plot_curves(rows: list[dict], out: str | os.PathLike, title: str = "") -> Path:
    """Write the curves of ``eval_retrieval`` rows to ``out`` (.png or .html); returns the path."""
    out = Path(out)
    directions = list(dict.fromkeys(r["direction"] for r in rows))
    if not directions:
        raise ValueError("no retrieval rows to plot")
    if out.suffix.lower() == ".html":
        return _html(rows, directions, out, title)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--plot wants a .png or .html file, got {out.name}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot out.png needs matplotlib: pip install 'clip-retrieval-engine[plot]'") from None
    fig, axes = plt.subplots(1, len(directions), figsize=(5.5 * len(directions), 4.2), squeeze=False)
    for ax, d in zip(axes[0], directions):
        for r in (r for r in rows if r["direction"] == d):
            ks = range(1, len(r["curve"]) + 1)
            ax.plot(ks, r["curve"], marker="o", markersize=3, label=f"{r['method']} (R@1 {r['curve'][0]:.3f})")
        ax.set_title(d)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _html(rows: list[dict], directions: list[str], out: Path, title: str) -> Path:
    try:
        from plotly.subplots import make_subplots
    except ImportError:
        raise UsageError("--plot out.html needs plotly (pip install plotly); or write a .png") from None
    import plotly.graph_objects as go

    fig = make_subplots(rows=1, cols=len(directions), subplot_titles=directions)
    for col, d in enumerate(directions, 1):
        for r in (r for r in rows if r["direction"] == d):
            fig.add_trace(go.Scatter(x=list(range(1, len(r["curve"]) + 1)), y=r["curve"], mode="lines+markers",
                                     name=f"{d}: {r['method']}"), row=1, col=col)
    fig.update_layout(title=title)
    fig.write_html(str(out), include_plotlyjs=True)  # self-contained: no CDN
    return out
