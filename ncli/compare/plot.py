"""The paper's figures from measure records (``ncli compare --plot``).

matplotlib is the ``[plot]`` extra: it is imported lazily, only here, and its absence is one
clear error (:func:`require_matplotlib`). Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot, no global state, no display needed); :func:`build_figure`
returns the figure so that callers and tests can inspect it, :func:`save_figure` writes it.

Panels against epoch (Papyan, Han & Donoho, PNAS 2020): train/test accuracy; NC1 (Fig. 6,
log scale); equinorm (Fig. 2); equiangularity (Fig. 3); max-angle (Fig. 4); GNC2's
hyperspherical uniformity (Liu et al. 2023; Wu & Papyan 2024), beside the NC2 panels, which
say so when C > p + 1 (no simplex ETF exists); self-duality (Fig. 5); NCC disagreement
(Fig. 7). The panels and what each draws are declared in the
metric registry (:mod:`ncli.measure.registry`). Class means are always drawn in one colour and
classifiers in another, the same in every panel; splits differ by line style.
"""

from __future__ import annotations

import os
from pathlib import Path

from ncli.console import install_hint, printable
from ncli.errors import EnvironmentProblem, UsageError
from ncli.measure.registry import EPOCH_PANELS, LAYER_PANELS, METRICS, SPLIT_NUMBERS, Panel
from ncli.outputs import check_output_path, cleanup_stale_temps, commit, temp_path_for, write_failure

MEANS_COLOR = "tab:blue"  # the paper's colour for class means
CLASSIFIERS_COLOR = "tab:orange"  # … and for classifiers
NEUTRAL_COLOR = "black"  # series that are neither (NC1, self-duality, accuracy, NCC)
SPLIT_STYLES = {"train": "-", "test": "--"}
OTHER_SPLIT_STYLES = (":", "-.")
LOG_X_SPAN = 100  # log x-axis when max/min epoch reaches this (epochs span two decades)

INSTALL_HINT = install_hint("plot")

SERIES = {"means": (MEANS_COLOR, "class means"), "classifiers": (CLASSIFIERS_COLOR, "classifiers")}


def require_matplotlib():
    """Import matplotlib or fail with one line that says how to install it."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            f"--plot needs matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return matplotlib


def check_plot_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail before any work when ``--plot`` cannot be written as asked."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--plot {path}: the file name must end in .png, .pdf or .svg")
    return check_output_path(out, force)


def _new_figure(nrows: int, ncols: int, size: tuple[float, float]):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    return fig, axes


def _text(name) -> str:
    """A name from a record as figure text: control characters escaped, ``$`` never starting
    matplotlib's math mode."""
    return printable(name).replace("$", r"\$")


def _num(v) -> float:
    if v is None or isinstance(v, bool):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _split_style(name: str, order: list[str]) -> str:
    if name in SPLIT_STYLES:
        return SPLIT_STYLES[name]
    others = [s for s in order if s not in SPLIT_STYLES]
    return OTHER_SPLIT_STYLES[others.index(name) % len(OTHER_SPLIT_STYLES)]


def _splits(records: list[dict]) -> list[str]:
    names: list[str] = []
    for rec in records:
        for s in rec.get("splits", {}):
            if s not in names:
                names.append(s)
    # train first, then test, then the rest as met
    return sorted(names, key=lambda s: (s != "train", s != "test", names.index(s)))


def x_axis(records: list[dict]) -> tuple[list[float], str, str]:
    """(x values, axis label, scale). Epochs when every run stores one, else run index."""
    epochs = [r.get("epoch") for r in records]
    if not records or any(e is None for e in epochs):
        return list(range(len(records))), "run (in order; epoch not stored)", "linear"
    xs = [float(e) for e in epochs]
    scale = "linear"
    lo, hi = min(xs), max(xs)
    if lo > 0 and hi / lo >= LOG_X_SPAN:
        scale = "log"
    elif lo == 0:
        pos = [x for x in xs if x > 0]
        if pos and max(pos) / min(pos) >= LOG_X_SPAN:
            scale = "symlog"
    return xs, "epoch", scale


def _set_xscale(ax, scale: str) -> None:
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=1)
    elif scale == "log":
        ax.set_xscale("log")


def _plot(ax, xs, ys, **kw) -> bool:
    vals = [_num(v) for v in ys]
    if all(v != v for v in vals):  # all NaN: nothing to draw
        return False
    ax.plot(xs, vals, marker="o", markersize=3, linewidth=1.5, **kw)
    return True


def _not_available(ax, why: str = "not available") -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _metric(records, key):
    return [r.get("metrics", {}).get(key) for r in records]


def _split_values(records, split, key):
    return [r.get("splits", {}).get(split, {}).get(key) for r in records]


def _draw(ax, panel: Panel, which: str, xs, records, splits, color: str | None = None) -> bool:
    """Draw into ``ax`` what the registry places in ``panel`` (``which``: "epoch_panel" or
    "layer_panel"): metrics as one line each, split numbers as one line per split. Means and
    classifiers get their colour pair, everything else ``color`` (default: neutral)."""
    drawn = False
    for metric in METRICS:
        if getattr(metric, which) is panel:
            style = {"color": color or NEUTRAL_COLOR}
            if color is None and metric.series is not None:
                style["color"], style["label"] = SERIES[metric.series]
            drawn |= _plot(ax, xs, _metric(records, metric.key), **style)
    for number in SPLIT_NUMBERS:
        if getattr(number, which) is panel:
            for s in splits:
                style = {"color": color or NEUTRAL_COLOR, "linestyle": _split_style(s, splits)}
                if color is None:
                    style["label"] = _text(s)
                drawn |= _plot(ax, xs, _split_values(records, s, number.key), **style)
    return drawn


def build_figure(records: list[dict]):
    """One figure, the paper's panels against epoch (run index when epochs are missing).

    ``records`` are measure records in the order to draw (``ncli compare`` orders them by
    epoch). Returns a ``matplotlib.figure.Figure`` with one axis per panel of
    :data:`ncli.measure.registry.EPOCH_PANELS`, titled by them; the legend for
    means/classifiers and splits is a figure legend.
    """
    if not records:
        raise ValueError("build_figure needs at least one record")
    fig, axes = _new_figure(3, 3, (14, 11))
    fig.delaxes(axes[-1])  # 8 panels; the 9th slot holds the legend
    axes = axes[: len(EPOCH_PANELS)]
    xs, xlabel, scale = x_axis(records)
    splits = _splits(records)
    no_simplex = _no_simplex(records)
    for ax, panel in zip(axes, EPOCH_PANELS):
        drawn = _draw(ax, panel, "epoch_panel", xs, records, splits)
        if panel.fraction and drawn:
            ax.set_ylim(-0.02, 1.02)
        if not drawn:
            _not_available(ax, panel.unavailable)
        if panel.simplex and no_simplex:
            ax.text(0.5, 0.97, no_simplex, transform=ax.transAxes, ha="center", va="top", color="0.35", fontsize=8)
        if panel.log:
            ax.set_yscale("log")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        _set_xscale(ax, scale)
        ax.grid(True, which="major", alpha=0.3)

    # one legend for the whole figure, in the free 8th slot
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=MEANS_COLOR, marker="o", markersize=3, label="class means (μ_c − μ_G)"),
        Line2D([], [], color=CLASSIFIERS_COLOR, marker="o", markersize=3, label="classifiers (w_c)"),
    ]
    handles += [
        Line2D([], [], color=NEUTRAL_COLOR, linestyle=_split_style(s, splits), label=f"{_text(s)} split") for s in splits
    ]
    fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(0.95, 0.1), frameon=False, fontsize=10)
    fig.suptitle(
        f"Neural Collapse over {len(records)} run{'s' if len(records) != 1 else ''} "
        f"(Papyan, Han & Donoho, PNAS 2020){_classes_note(records)}",
        fontsize=12,
    )
    return fig


def _measured(rec: dict) -> int | None:
    return rec.get("classes_measured", rec.get("num_classes"))


def _no_simplex(records: list[dict]) -> str | None:
    """What the NC2 panels say when a run has more classes than a simplex ETF can hold in its
    feature space (C > p + 1): their target does not exist (GNC2 is meaningful there)."""
    over = [r for r in records if _measured(r) and r.get("feature_dim") and _measured(r) > r["feature_dim"] + 1]
    if not over:
        return None
    rec = max(over, key=_measured)
    return f"no simplex ETF exists at C = {_measured(rec):,} > p + 1 = {rec['feature_dim'] + 1}"


def _classes_note(records: list[dict]) -> str:
    """", C' of C classes measured" when --min-per-class left classes out of some run."""
    fewer = [r for r in records if _measured(r) != r.get("num_classes")]
    if not fewer:
        return ""
    low, high = min(_measured(r) for r in fewer), max(_measured(r) for r in fewer)
    counts = f"{low:,}" if low == high else f"{low:,}–{high:,}"
    totals = sorted({r.get("num_classes") for r in fewer})
    return f"\n{counts} of {', '.join(f'{t:,}' for t in totals)} classes measured"


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

    fig, axes = _new_figure(2, 4, (16, 7.5))
    fig.delaxes(axes[-1])
    axes = axes[: len(LAYER_PANELS)]
    cmap = colormaps["viridis"]
    n = len(groups)
    colors = [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]
    all_records = [r for _, recs in groups for r in recs]
    splits = _splits(all_records)
    names: list[str] = []
    for _, recs in groups:
        for r in recs:
            name = r.get("layer") or "features"
            if name not in names:
                names.append(name)
    for (label, recs), color in zip(groups, colors):
        xs = [names.index(r.get("layer") or "features") for r in recs]
        for ax, panel in zip(axes, LAYER_PANELS):
            _draw(ax, panel, "layer_panel", xs, recs, splits, color=color)
    for ax, panel in zip(axes, LAYER_PANELS):
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("layer (input → output)")
        ax.set_xticks(range(len(names)), [_text(name) for name in names], rotation=30, ha="right", fontsize=8)
        if panel.log:
            ax.set_yscale("log")
        if panel.fraction:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", markersize=3, label=_text(lab)) for (lab, _), c in zip(groups, colors)]
    handles += [Line2D([], [], color=NEUTRAL_COLOR, linestyle=_split_style(s, splits), label=f"{_text(s)} split") for s in splits]
    fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(0.97, 0.08), frameon=False, fontsize=9)
    fig.suptitle("Progressive collapse across layers", fontsize=12)
    return fig


def save_figure(fig, path: str | os.PathLike, *, force: bool = False, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix: png, pdf, svg) via a temporary file moved into
    place (:mod:`ncli.outputs`), so a reader never sees half a figure; an existing file is
    kept unless ``force``."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    cleanup_stale_temps(out.parent if str(out.parent) else ".")
    tmp = temp_path_for(out)
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_metadata(fmt))
        commit(tmp, out, force=force)
    except OSError as exc:  # a full disk: one line naming the figure
        problem = write_failure(out, exc)
        if problem is None:
            raise
        raise problem from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _metadata(fmt: str) -> dict:
    """No timestamps or versions in the file, so the same records give the same bytes."""
    if fmt == "png":
        return {"Software": None}
    if fmt == "pdf":
        return {"Creator": None, "Producer": None, "CreationDate": None}
    if fmt == "svg":
        return {"Creator": None, "Date": None}
    return {}
