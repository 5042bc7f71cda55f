"""The paper's figures from measure records (``ncli compare --plot``).

matplotlib is the ``[plot]`` extra: it is imported lazily, only here, and its absence is one
clear error (:func:`require_matplotlib`). Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot, no global state, no display needed); the builders return the
figure so that callers and tests can inspect it, :func:`save_figure` writes it.

Panels against epoch (Papyan, Han & Donoho, PNAS 2020): train/test accuracy; NC1 (Fig. 6,
log scale); equinorm (Fig. 2); equiangularity (Fig. 3); max-angle (Fig. 4); GNC2's
hyperspherical uniformity (Liu et al. 2023; Wu & Papyan 2024), beside the NC2 panels, which
say so when C > p + 1 (no simplex ETF exists); self-duality (Fig. 5); NCC disagreement
(Fig. 7). The panels and what each draws are declared in the metric registry
(:mod:`ncli.measure.registry`). One training run: class means in one colour and classifiers in
another, the same in every panel, splits by line style. Several runs (grouped by
:mod:`ncli.compare.series`): a colour per run, as the paper's Figs. 2-7 overlay datasets and
networks. The layer figure is in :mod:`ncli.compare.plot_layers`, the per-class view in
:mod:`ncli.compare.plot_per_class`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ncli.compare.series import Series
from ncli.console import install_hint, printable
from ncli.errors import EnvironmentProblem, UsageError
from ncli.measure.registry import EPOCH_PANELS, METRICS, SPLIT_NUMBERS, Panel
from ncli.outputs import check_output_path, cleanup_stale_temps, commit, temp_path_for, write_failure

MEANS_COLOR = "tab:blue"  # the paper's colour for class means
CLASSIFIERS_COLOR = "tab:orange"  # … and for classifiers
NEUTRAL_COLOR = "black"  # series that are neither (NC1, self-duality, accuracy, NCC)
SPLIT_STYLES = {"train": "-", "test": "--"}
OTHER_SPLIT_STYLES = (":", "-.")
LOG_X_SPAN = 100  # log x-axis when max/min epoch reaches this (epochs span two decades)

INSTALL_HINT = install_hint("plot")

SERIES = {"means": (MEANS_COLOR, "class means"), "classifiers": (CLASSIFIERS_COLOR, "classifiers")}
# several runs: a colour per run; means and classifiers told apart by line style and marker
SERIES_STYLES = {"means": {"linestyle": "-", "marker": "o"}, "classifiers": {"linestyle": "-.", "marker": "s"}}
STYLE_KEY_COLOR = "0.3"  # the legend's line-style key when colours are runs
MEANS_LABEL = r"class means ($\mu_c-\mu_G$)"
CLASSIFIERS_LABEL = r"classifiers ($w_c$)"
TERMINAL_PHASE_GID = "terminal-phase"  # the vertical line where train error reaches 0
TERMINAL_PHASE_COLOR = "0.45"
TERMINAL_PHASE_STYLE = {"linestyle": ":", "linewidth": 1.3}
LOG_TICK_SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), tuple(float(d) for d in range(1, 10)))


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


def check_plot_path(path: str | os.PathLike, force: bool, option: str = "--plot") -> Path:
    """Fail before any work when a figure (``option``) cannot be written as asked."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{option} {path}: the file name must end in .png, .pdf or .svg")
    return check_output_path(out, force)


def new_figure(nrows: int, ncols: int, size: tuple[float, float]):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    return fig, axes


def figure_text(name) -> str:
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


def split_style(name: str, order: list[str]) -> str:
    if name in SPLIT_STYLES:
        return SPLIT_STYLES[name]
    others = [s for s in order if s not in SPLIT_STYLES]
    return OTHER_SPLIT_STYLES[others.index(name) % len(OTHER_SPLIT_STYLES)]


def split_names(records: list[dict]) -> list[str]:
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
    """The epoch axis: log (labelled 1, 2, 5, 10, …) or symlog (epoch 0 is there)."""
    if scale == "symlog":
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("symlog", linthresh=1)
        ax.xaxis.set_major_formatter(FuncFormatter(tick_text))
    elif scale == "log":
        ax.set_xscale("log")
        log_ticks(ax.xaxis)


def _plot(ax, xs, ys, **kw) -> bool:
    vals = [_num(v) for v in ys]
    if all(v != v for v in vals):  # all NaN: nothing to draw
        return False
    ax.plot(xs, vals, **{"marker": "o", "markersize": 3, "linewidth": 1.5, **kw})
    return True


def _not_available(ax, why: str = "not available") -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _metric(records, key):
    return [r.get("metrics", {}).get(key) for r in records]


def _split_values(records, split, key):
    return [r.get("splits", {}).get(split, {}).get(key) for r in records]


def draw_panel(ax, panel: Panel, which: str, xs, records, splits, color: str | None = None) -> bool:
    """Draw into ``ax`` what the registry places in ``panel`` (``which``: "epoch_panel" or
    "layer_panel"): metrics as one line each, split numbers as one line per split. Without
    ``color`` (one run) means and classifiers get their colour pair, everything else the
    neutral colour; with it (a run of several) everything is drawn in the run's colour, and
    means and classifiers differ by line style and marker."""
    drawn = False
    for metric in METRICS:
        if getattr(metric, which) is panel:
            style = {"color": color or NEUTRAL_COLOR}
            if metric.series is not None:
                if color is None:
                    style["color"], style["label"] = SERIES[metric.series]
                else:
                    style.update(SERIES_STYLES[metric.series])
            drawn |= _plot(ax, xs, _metric(records, metric.key), **style)
    for number in SPLIT_NUMBERS:
        if getattr(number, which) is panel:
            for s in splits:
                style = {"color": color or NEUTRAL_COLOR, "linestyle": split_style(s, splits)}
                if color is None:
                    style["label"] = figure_text(s)
                drawn |= _plot(ax, xs, _split_values(records, s, number.key), **style)
    return drawn


def terminal_phase(records: list[dict], xs: list[float]) -> float | None:
    """Where the terminal phase of training starts (the paper's dashed line): the x of the first
    record whose train accuracy (the network's, on the split that defines the metrics) is 1,
    i.e. train error 0. None when no record gets there or none has a classifier."""
    for record, x in zip(records, xs):
        split = record.get("train_split") or "train"
        accuracy = record.get("splits", {}).get(split, {}).get("accuracy")
        if _num(accuracy) >= 1.0:
            return x
    return None


def run_colors(count: int) -> list:
    """One colour per run: tab10, tab20 beyond ten runs."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def build_figure(records: list[dict]):
    """The paper's panels for one run (see :func:`build_runs_figure`)."""
    return build_runs_figure([Series("", records)])


def build_runs_figure(runs: list[Series]):
    """One figure, the paper's panels against epoch (run index when epochs are missing), one
    line per run and metric.

    ``runs`` are the training runs (:func:`ncli.compare.series.group_series`), each with its
    records in the order to draw (``ncli compare`` orders them by epoch). One run is drawn as
    the paper's single-run panels: class means and classifiers in their colour pair, splits by
    line style. Several runs get one colour each, with means and classifiers told apart by line
    style and marker. A dotted vertical line per run marks the epoch where its train error
    reaches 0 (:func:`terminal_phase`). Returns a ``matplotlib.figure.Figure`` with one axis
    per panel of :data:`ncli.measure.registry.EPOCH_PANELS`, titled by them, and one figure
    legend.
    """
    runs = [run for run in runs if run.records]
    if not runs:
        raise ValueError("build_runs_figure needs at least one record")
    from matplotlib.lines import Line2D

    fig, axes = new_figure(3, 3, (12, 10))
    fig.delaxes(axes[-1])  # 8 panels; the 9th slot holds the legend
    axes = axes[: len(EPOCH_PANELS)]
    all_records = [r for run in runs for r in run.records]
    _, xlabel, scale = x_axis(all_records)
    splits = split_names(all_records)
    no_simplex = _no_simplex(all_records)
    single = len(runs) == 1
    colors = [None] if single else run_colors(len(runs))
    drawn = dict.fromkeys(EPOCH_PANELS, False)
    handles = []
    marked = False  # some run reaches train error 0
    for run, color in zip(runs, colors):
        xs = x_axis(run.records)[0] if xlabel == "epoch" else list(range(len(run.records)))
        for ax, panel in zip(axes, EPOCH_PANELS):
            drawn[panel] |= draw_panel(ax, panel, "epoch_panel", xs, run.records, splits, color=color)
        start = terminal_phase(run.records, xs)
        marker_color = color if color is not None else TERMINAL_PHASE_COLOR
        if start is not None:
            marked = True
            for ax in axes:
                ax.axvline(start, color=marker_color, gid=TERMINAL_PHASE_GID, **TERMINAL_PHASE_STYLE)
        if not single:
            label = _short(figure_text(run.label)) + ("" if start is None else f"  (train error 0 at {_x_text(start, xlabel)})")
            handles.append(Line2D([], [], color=color, marker="o", markersize=3, label=label))
        elif start is not None:
            handles.append(
                Line2D([], [], color=marker_color, label=f"train error 0 at {_x_text(start, xlabel)}", **TERMINAL_PHASE_STYLE)
            )
    for ax, panel in zip(axes, EPOCH_PANELS):
        if panel.fraction and drawn[panel]:
            ax.set_ylim(-0.02, 1.02)
        if not drawn[panel]:
            _not_available(ax, panel.unavailable)
        if panel.simplex and no_simplex:
            ax.text(0.5, 0.97, no_simplex, transform=ax.transAxes, ha="center", va="top", color="0.35", fontsize=8)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        _set_xscale(ax, scale)
        if panel.log:
            ax.set_yscale("log")
            if drawn[panel]:
                log_ticks(ax.yaxis)
        ax.grid(True, which="major", alpha=0.3)

    # one legend for the whole figure, in the free 9th slot
    style_color = NEUTRAL_COLOR if single else STYLE_KEY_COLOR
    if single:
        keys = [
            Line2D([], [], color=MEANS_COLOR, marker="o", markersize=3, label=MEANS_LABEL),
            Line2D([], [], color=CLASSIFIERS_COLOR, marker="o", markersize=3, label=CLASSIFIERS_LABEL),
        ]
    else:
        keys = [
            Line2D([], [], color=style_color, markersize=3, label=MEANS_LABEL, **SERIES_STYLES["means"]),
            Line2D([], [], color=style_color, markersize=3, label=CLASSIFIERS_LABEL, **SERIES_STYLES["classifiers"]),
        ]
    keys += [
        Line2D([], [], color=style_color, linestyle=split_style(s, splits), label=f"{figure_text(s)} split") for s in splits
    ]
    if not single and marked:
        keys.append(Line2D([], [], color=style_color, label="train error reaches 0", **TERMINAL_PHASE_STYLE))
    entries = handles + keys
    fig.legend(
        handles=entries, loc="lower right", bbox_to_anchor=(0.97, 0.06), frameon=False,
        fontsize=10 if len(entries) <= 12 else 8, ncols=1 if len(entries) <= 14 else 2,
        title=None if single else "runs", alignment="left",
    )
    checkpoints = f"{len(all_records)} checkpoint{'s' if len(all_records) != 1 else ''}"
    what = checkpoints if single else f"{len(runs)} runs ({checkpoints})"
    fig.suptitle(
        f"Neural Collapse over {what} (Papyan, Han & Donoho, PNAS 2020){_classes_note(all_records)}", fontsize=12,
    )
    return fig


def _short(label: str, width: int = 32) -> str:
    """A run's legend label, its start cut when long (paths differ at the end)."""
    return label if len(label) <= width else "…" + label[-(width - 1):]


def _x_text(x: float, xlabel: str) -> str:
    return f"epoch {x:g}" if xlabel == "epoch" else f"run {x:g}"


def tick_text(value: float, _position=None) -> str:
    return f"{value:g}"


def log_ticks(axis) -> None:
    """Enough labelled ticks on a logarithmic ``axis`` (an Axis of a drawn Axes), written as
    plain numbers: decades, or the coarsest of 1-2-5, 1-2-3-5 and every digit that puts three
    labels in view; a range too short for two is widened to the ticks around it."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax = axis.axes
    get_lim, set_lim = (ax.get_ylim, ax.set_ylim) if axis is ax.yaxis else (ax.get_xlim, ax.set_xlim)
    low, high = sorted(get_lim())
    if not (low > 0 and high > low):
        return
    for subs in LOG_TICK_SUBS:
        locator = LogLocator(base=10, subs=subs, numticks=12)
        inside = [t for t in locator.tick_values(low, high) if low <= t <= high]
        if len(inside) >= 3:
            break
    if len(inside) < 2:  # widen to the ticks just outside
        ticks = list(locator.tick_values(low / 10, high * 10))
        below = max((t for t in ticks if t <= low), default=low)
        above = min((t for t in ticks if t >= high), default=high)
        set_lim(below, above)
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(tick_text))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(d) for d in range(2, 10)), numticks=12))
    axis.set_minor_formatter(NullFormatter())


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


def save_figure(fig, path: str | os.PathLike, *, force: bool = False, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix: png, pdf, svg) via a temporary file moved into
    place (:mod:`ncli.outputs`), so a reader never sees half a figure; an existing file is
    kept unless ``force``."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    cleanup_stale_temps(out.parent if str(out.parent) else ".")
    tmp = temp_path_for(out)
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_NO_METADATA.get(fmt, {}))
        commit(tmp, out, force=force)
    except OSError as exc:  # a full disk: one line naming the figure
        problem = write_failure(out, exc)
        if problem is None:
            raise
        raise problem from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


# no timestamps or versions in the file, so the same records give the same bytes
_NO_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                "svg": {"Creator": None, "Date": None}}
