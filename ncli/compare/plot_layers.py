"""The progressive-collapse figure (``ncli compare --by layer --plot``): the classifier-free
metrics against layer depth, one line per file, panels as the registry declares them
(:data:`ncli.measure.registry.LAYER_PANELS`). Shares the drawing helpers of
:mod:`ncli.compare.plot`; matplotlib is imported lazily as there."""

from __future__ import annotations

from ncli.compare.plot import (
    NEUTRAL_COLOR, draw_panel, figure_text, log_ticks, new_figure, require_matplotlib, split_names, split_style,
)
from ncli.measure.registry import LAYER_PANELS


def build_layer_figure(groups: list[tuple[str, list[dict]]]):
    """Classifier-free metrics against layer depth, one line per file (``--by layer``).

    ``groups`` is a list of (label, records of that file's layers in depth order). Returns a
    Figure with one axis per panel of :data:`ncli.measure.registry.LAYER_PANELS`.
    """
    if not groups:
        raise ValueError("build_layer_figure needs at least one group")
    require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    fig, axes = new_figure(2, 4, (16, 7.5))
    fig.delaxes(axes[-1])
    axes = axes[: len(LAYER_PANELS)]
    cmap = colormaps["viridis"]
    n = len(groups)
    colors = [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]
    all_records = [r for _, recs in groups for r in recs]
    splits = split_names(all_records)
    names: list[str] = []
    for _, recs in groups:
        for r in recs:
            name = r.get("layer") or "features"
            if name not in names:
                names.append(name)
    for (label, recs), color in zip(groups, colors):
        xs = [names.index(r.get("layer") or "features") for r in recs]
        for ax, panel in zip(axes, LAYER_PANELS):
            draw_panel(ax, panel, "layer_panel", xs, recs, splits, color=color)
    for ax, panel in zip(axes, LAYER_PANELS):
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel)
        ax.set_xlabel("layer (input → output)")
        ax.set_xticks(range(len(names)), [figure_text(name) for name in names], rotation=30, ha="right", fontsize=8)
        if panel.log:
            ax.set_yscale("log")
            if ax.get_lines():
                log_ticks(ax.yaxis)
        if panel.fraction:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", markersize=3, label=figure_text(lab)) for (lab, _), c in zip(groups, colors)]
    handles += [Line2D([], [], color=NEUTRAL_COLOR, linestyle=split_style(s, splits), label=f"{figure_text(s)} split") for s in splits]
    fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(0.97, 0.08), frameon=False, fontsize=9)
    fig.suptitle("Progressive collapse across layers", fontsize=12)
    return fig
