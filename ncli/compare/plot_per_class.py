"""The per-class view (``ncli compare --plot-per-class``): where one class does not collapse.

Heat maps of class × checkpoint, one row of panels per training run, from the ``per_class``
rows of the records (``ncli measure --per-class``; compare measures feature files with them):

- cos(w_c, μ_c − μ_G): classifier–mean alignment of each class (NC3 per class), 1 when dual;
- σ_c² / ‖μ_c − μ_G‖²: within-class spread against the distance to the global mean (NC1 per
  class), log colour scale;
- ‖μ_c − μ_G‖ over the mean of the classes' norms: equinorm per class (NC2), 1 when equal;
- NCC disagreement per class on the headline split (test when there is one; NC4).

In the first three, yellow is collapsed. Beside them, at the run's last checkpoint, the
pairwise cosines cos(μ_c − μ_G, μ_c' − μ_G) and cos(w_c, μ_c' − μ_G) (C × C; −1/(C−1) off the
diagonal at collapse, and a diagonal of 1 for the classifiers) when the records carry them
(``class_cosines``: compare measures feature files with them up to 64 classes; ``ncli measure
--json`` records do not). Above ``MAX_CLASSES`` classes (a vocabulary) only the least collapsed are drawn:
those with the largest σ_c² / ‖μ_c − μ_G‖² at the run's last checkpoint; the title says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ncli.compare.plot import figure_text, new_figure, tick_text
from ncli.compare.series import Series
from ncli.errors import InputError, UsageError

MAX_CLASSES = 64  # heat-map rows per run; above, the least collapsed classes
MAX_LABELS = 32  # tick labels per axis; above, every k-th
MISSING_COLOR = "0.85"  # a class not measured at a checkpoint, or a value not available


@dataclass(frozen=True)
class Quantity:
    """One heat map: a number of each class at each checkpoint."""

    key: str
    label: str
    colormap: str
    log: bool = False
    centre: float | None = None  # a diverging colour scale around this value


COS_CLASSIFIER_MEAN = Quantity("cos_classifier_mean", r"$\cos(w_c,\ \mu_c-\mu_G)$", "viridis")
VARIABILITY = Quantity("variability", r"$\sigma_c^2\ /\ \|\mu_c-\mu_G\|^2$ (log)", "viridis_r", log=True)
RELATIVE_NORM = Quantity("relative_norm", r"$\|\mu_c-\mu_G\|$ / mean over classes", "RdBu_r", centre=1.0)
NCC_DISAGREEMENT = Quantity("ncc_disagreement", "NCC disagreement", "viridis_r")
QUANTITIES = (COS_CLASSIFIER_MEAN, VARIABILITY, RELATIVE_NORM, NCC_DISAGREEMENT)


@dataclass
class PerClassView:
    """What one run's row of heat maps shows: ``values[key]`` is (classes × checkpoints), NaN
    where a class was not measured or a value is not available."""

    label: str
    classes: list[int]  # the file's class indices, in row order
    names: list[str]  # their tick labels
    x: list[str]  # the checkpoints' column labels
    total_classes: int  # classes the run has per-class rows for (> len(classes) when selected)
    headline: str  # the split of the NCC disagreement
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _ratio(num, den) -> float:
    if num is None or den is None or not den:
        return math.nan
    return float(num) / float(den)


def _row_values(record: dict, headline: str) -> dict[int, dict[str, float]]:
    """The quantities of each class of one record, by class index."""
    rows = record.get("per_class") or []
    dists = [row.get("mean_dist") for row in rows if row.get("mean_dist") is not None]
    mean_dist = float(np.mean(dists)) if dists else math.nan
    out = {}
    for row in rows:
        dist = row.get("mean_dist")
        cos = row.get("cos_classifier_mean")
        disagreement = (row.get("ncc_disagreement") or {}).get(headline)
        out[int(row["class"])] = {
            COS_CLASSIFIER_MEAN.key: math.nan if cos is None else float(cos),
            VARIABILITY.key: _ratio(row.get("sigma2"), None if dist is None else dist * dist),
            RELATIVE_NORM.key: _ratio(dist, mean_dist),
            NCC_DISAGREEMENT.key: math.nan if disagreement is None else float(disagreement),
        }
    return out


def _headline(records: list[dict]) -> str:
    """The split whose NCC disagreement is drawn: test when the run has it, as measure's headline."""
    splits = [s for r in records for s in r.get("splits", {})]
    if "test" in splits:
        return "test"
    return records[-1].get("train_split") or "train"


def _column_label(record: dict, index: int) -> str:
    epoch = record.get("epoch")
    return f"{epoch}" if epoch is not None else f"#{index}"


def per_class_view(series: Series) -> PerClassView:
    """The heat maps' numbers for one run (see the module docstring)."""
    records = series.records
    headline = _headline(records)
    columns = [_row_values(r, headline) for r in records]
    names: dict[int, str] = {}
    for record in records:
        for row in record.get("per_class") or []:
            names.setdefault(int(row["class"]), row.get("name") or str(row["class"]))
    classes = sorted(names)
    total = len(classes)
    if total > MAX_CLASSES:
        last = next(column for column in reversed(columns) if column)
        spread = {c: last.get(c, {}).get(VARIABILITY.key, math.nan) for c in classes}
        ranked = sorted(classes, key=lambda c: (not spread[c] > -math.inf, -spread[c] if spread[c] == spread[c] else 0, c))
        classes = sorted(ranked[:MAX_CLASSES])
    view = PerClassView(
        label=series.label, classes=classes, names=[figure_text(names[c]) for c in classes],
        x=[_column_label(r, i) for i, r in enumerate(records)], total_classes=total, headline=headline,
    )
    for quantity in QUANTITIES:
        matrix = np.full((len(classes), len(records)), math.nan)
        for j, column in enumerate(columns):
            for i, c in enumerate(classes):
                if c in column:
                    matrix[i, j] = column[c][quantity.key]
        view.values[quantity.key] = matrix
    return view


def _ticks(count: int) -> list[int]:
    step = max(1, math.ceil(count / MAX_LABELS))
    return list(range(0, count, step))


def _norm(quantity: Quantity, matrix: np.ndarray):
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    finite = matrix[np.isfinite(matrix)]
    if quantity.log:
        positive = finite[finite > 0]
        if positive.size:
            low, high = float(positive.min()), float(positive.max())
            return LogNorm(low, high if high > low else low * 10)
        return Normalize(0, 1)
    if quantity.centre is not None:
        spread = float(np.max(np.abs(finite - quantity.centre))) if finite.size else 0.0
        spread = spread or 0.5
        return TwoSlopeNorm(quantity.centre, max(0.0, quantity.centre - spread), quantity.centre + spread)
    if quantity is COS_CLASSIFIER_MEAN:
        return Normalize(min(0.0, float(finite.min())) if finite.size else 0.0, 1.0)
    return Normalize(0.0, max(float(finite.max()) if finite.size else 0.0, 1e-12))


def build_per_class_figure(runs: list[Series]):
    """Heat maps of every quantity for every run (a row, or two with the pairwise maps, per
    run); returns the Figure. Raises UsageError when no record has per-class rows."""
    runs = [run for run in runs if any(r.get("per_class") for r in run.records)]
    if not runs:
        raise UsageError(
            "--plot-per-class: the records have no per-class rows; give feature files, or the lines of "
            "`ncli measure --per-class --json`"
        )
    try:
        views = [per_class_view(run) for run in runs]
        pairs = [pairwise_view(run) for run in runs]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # records from JSON are not checked this deep
        raise InputError(f"--plot-per-class: malformed per-class rows or class_cosines in a record ({exc!r})") from None
    slots = len(QUANTITIES) + (len(PAIRWISE) if any(pairs) else 0)
    columns = 3 if slots > len(QUANTITIES) else len(QUANTITIES)
    rows_per_run = math.ceil(slots / columns)
    tallest = max(len(view.classes) for view in views)
    row_height = 2.6 + 0.07 * min(tallest, MAX_CLASSES)
    fig, axes = new_figure(len(views) * rows_per_run, columns, (15, row_height * rows_per_run * len(views) + 0.6))
    for index, (view, pair) in enumerate(zip(views, pairs)):
        run_axes = axes[index * rows_per_run * columns:(index + 1) * rows_per_run * columns]
        for ax, quantity in zip(run_axes, QUANTITIES):
            _draw_quantity(fig, ax, view, quantity)
        for ax, (key, title) in zip(run_axes[len(QUANTITIES):], PAIRWISE):
            _draw_pairwise(fig, ax, pair, key, title)
        for ax in run_axes[slots:]:
            fig.delaxes(ax)
        run_axes[0].set_ylabel(_row_title(view), fontsize=9)
    fig.suptitle("Per-class collapse: class × checkpoint (yellow: collapsed)", fontsize=12)
    return fig


def _draw_quantity(fig, ax, view: PerClassView, quantity: Quantity) -> None:
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    matrix = view.values[quantity.key]
    cmap = colormaps[quantity.colormap].with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(
        np.ma.masked_invalid(matrix), aspect="auto", interpolation="nearest", cmap=cmap, norm=_norm(quantity, matrix),
    )
    image.set_gid(quantity.key)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.02)
    if quantity.log:  # plain numbers (0.1, 0.2, 0.5), as on the figure's log axes
        colorbar.ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        colorbar.ax.yaxis.set_major_formatter(FuncFormatter(tick_text))
        colorbar.ax.yaxis.set_minor_formatter(NullFormatter())
    label = quantity.label
    if quantity is NCC_DISAGREEMENT:
        label = f"{label} ({figure_text(view.headline)})"
    ax.set_title(label, fontsize=10)
    columns = _ticks(len(view.x))
    ax.set_xticks(columns, [view.x[j] for j in columns], fontsize=8)
    ax.set_xlabel("epoch" if not any(x.startswith("#") for x in view.x) else "checkpoint")
    _class_ticks(ax.set_yticks, view.names)


def _class_ticks(set_ticks, names: list[str]) -> None:
    rows = _ticks(len(names))
    set_ticks(rows, [names[i] for i in rows], fontsize=7 if len(names) > 16 else 8)


# --- pairwise cosines at the last checkpoint ------------------------------------------------

PAIRWISE = (
    ("means", r"$\cos(\mu_c-\mu_G,\ \mu_{c'}-\mu_G)$"),
    ("classifier_means", r"$\cos(w_c,\ \mu_{c'}-\mu_G)$"),
)


def pairwise_view(series: Series) -> dict | None:
    """The class cosines of the run's last record that has them (``ncli compare`` measures
    feature files with them, up to :data:`ncli.measure.record.MAX_COSINE_CLASSES` classes):
    {"x": its column label, "names": class labels, "means": C × C, "classifier_means": C × C or
    None}; None when no record has them."""
    for index in range(len(series.records) - 1, -1, -1):
        record = series.records[index]
        cosines = record.get("class_cosines")
        if cosines:
            names = {int(row["class"]): row.get("name") or str(row["class"]) for row in record.get("per_class") or []}
            out = {"x": _column_label(record, index), "names": [figure_text(names.get(c, c)) for c in cosines["classes"]]}
            for key, _ in PAIRWISE:
                out[key] = None if cosines.get(key) is None else np.array(cosines[key], dtype=np.float64)
                if out[key] is not None and out[key].shape != (len(out["names"]),) * 2:
                    raise ValueError(f"{key} of {record['file']} is not a C × C matrix")
            return out
    return None


def _draw_pairwise(fig, ax, pair: dict | None, key: str, title: str) -> None:
    from matplotlib import colormaps

    if pair is None or pair[key] is None:
        why = "no classifier" if pair is not None else "only for feature files with ≤ 64 classes"
        ax.text(0.5, 0.5, f"{title}\nnot available ({why})", transform=ax.transAxes, ha="center", va="center", color="0.5")
        ax.set_axis_off()
        return
    cmap = colormaps["RdBu_r"].with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(np.ma.masked_invalid(pair[key]), interpolation="nearest", cmap=cmap, vmin=-1.0, vmax=1.0)
    image.set_gid(f"cos_{key}")
    fig.colorbar(image, ax=ax, fraction=0.08, pad=0.02)
    epoch = f"epoch {pair['x']}" if not pair["x"].startswith("#") else f"checkpoint {pair['x']}"
    ax.set_title(f"{title}, {epoch}", fontsize=10)
    _class_ticks(ax.set_yticks, pair["names"])
    _class_ticks(ax.set_xticks, pair["names"])
    ax.set_xlabel("class c′ (mean)")


def _row_title(view: PerClassView) -> str:
    name = f"{figure_text(view.label)}: " if view.label else ""
    if len(view.classes) < view.total_classes:
        return f"{name}{len(view.classes)} least collapsed of {view.total_classes:,} classes"
    return f"{name}class"
