"""The one list of what ``ncli measure`` reports: every metric and every per-split number,
declared once with its key, its caption, whether it needs the classifier, whether the
by-layer view shows it and where the figures draw it. Everything else derives from here: the
record's keys and their order, the table captions, compare's rows and CSV, the figure panels.

Adding a metric: a pure function in :mod:`ncli.measure.metrics` and one :class:`Metric` line
below (its ``compute`` gets a :class:`ncli.measure.metrics.Statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ncli.measure import metrics

# --- figure panels -------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One panel of a figure; the metrics or split numbers drawn in it name it."""

    title: str
    ylabel: str = ""
    log: bool = False  # logarithmic y axis
    fraction: bool = False  # values in [0, 1]: y axis fixed to that range
    unavailable: str = "not available"  # shown when nothing can be drawn
    simplex: bool = False  # an NC2 panel: its target, a simplex ETF, exists only while C ≤ p + 1


# Panels against epoch (Papyan, Han & Donoho, PNAS 2020), in figure order. Titles and labels
# are matplotlib text: subscripts and norms in mathtext ($...$), never a literal "_F".
NO_CLASSIFIER = "not available (no classifier)"
NC1_TEXT = r"$\mathrm{Tr}(\Sigma_W \Sigma_B^{+})/C$"
ACCURACY_PANEL = Panel("Accuracy (train / test)", "accuracy", fraction=True, unavailable=NO_CLASSIFIER)
NC1_PANEL = Panel(f"Fig. 6  NC1: {NC1_TEXT}", f"{NC1_TEXT} (log)", log=True)
EQUINORM_PANEL = Panel(
    "Fig. 2  Equinorm: std/mean of norms", r"std/mean of $\|\mu_c-\mu_G\|$, $\|w_c\|$", simplex=True
)
EQUIANGULAR_PANEL = Panel(
    "Fig. 3  Equiangularity: std of cosines", "std of cos over pairs", unavailable="not available (C = 2: one pair)",
    simplex=True,
)
MAXANGLE_PANEL = Panel("Fig. 4  Max-angle: mean |cos + 1/(C−1)|", "mean |cos + 1/(C−1)|", simplex=True)
GNC2_PANEL = Panel(
    r"GNC2  Uniformity: var of $\log 1/\|\hat u_c-\hat u_{c'}\|$", "variance over pairs (population)"
)
SELF_DUALITY_PANEL = Panel(
    r"Fig. 5  Self-duality: $\|W/\|W\| - M/\|M\|\|^2$",
    r"$\|W/\|W\|_F - M/\|M\|_F\|_F^2$", unavailable=NO_CLASSIFIER,
)
NCC_PANEL = Panel(
    "Fig. 7  NCC disagreement: net ≠ nearest class centre", "fraction of samples", unavailable=NO_CLASSIFIER
)
EPOCH_PANELS = (
    ACCURACY_PANEL, NC1_PANEL, EQUINORM_PANEL, EQUIANGULAR_PANEL, MAXANGLE_PANEL, GNC2_PANEL, SELF_DUALITY_PANEL,
    NCC_PANEL,
)

# Panels against layer depth (``compare --by layer``), classifier-free, in figure order.
LAYER_NC1_PANEL = Panel(f"NC1: {NC1_TEXT}", f"{NC1_TEXT} (log)", log=True)
LAYER_TRACE_RATIO_PANEL = Panel(
    r"Trace ratio: $\mathrm{Tr}(\Sigma_W)/\mathrm{Tr}(\Sigma_B)$", r"$\mathrm{Tr}(\Sigma_W)/\mathrm{Tr}(\Sigma_B)$ (log)",
    log=True,
)
LAYER_CDNV_PANEL = Panel("CDNV", "mean over pairs (log)", log=True)
LAYER_EQUINORM_PANEL = Panel("Equinorm of class means", r"std/mean of $\|\mu_c-\mu_G\|$")
LAYER_EQUIANGULAR_PANEL = Panel("Equiangularity of class means", "std of cos over pairs")
LAYER_MAXANGLE_PANEL = Panel("Max-angle of class means", "mean |cos + 1/(C−1)|")
LAYER_NCC_PANEL = Panel("NCC accuracy", "accuracy", fraction=True)
LAYER_PANELS = (
    LAYER_NC1_PANEL, LAYER_TRACE_RATIO_PANEL, LAYER_CDNV_PANEL, LAYER_EQUINORM_PANEL, LAYER_EQUIANGULAR_PANEL,
    LAYER_MAXANGLE_PANEL, LAYER_NCC_PANEL,
)


# --- per-split numbers ---------------------------------------------------------------------


@dataclass(frozen=True)
class SplitNumber:
    """A number every evaluated split gets (``record["splits"][name][key]``), from that split's
    decisions (:class:`ncli.measure.statistics.SplitStatistics`)."""

    key: str
    compute: Callable  # SplitStatistics -> value
    needs_classifier: bool = False
    in_rows: bool = True  # a row of compare's table (num_samples is not)
    by_layer: bool = False  # a row of compare's by-layer view
    per_class: Callable | None = None  # (SplitStatistics, c) -> value: in the per-class rows
    per_class_column: str = ""  # column head in the per-class table, followed by the split
    column: str | None = None  # its column in measure's splits table (default: the key)
    epoch_panel: Panel | None = None
    layer_panel: Panel | None = None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


NUM_SAMPLES = SplitNumber("num_samples", lambda s: s.num_samples, in_rows=False, column="samples")
ACCURACY = SplitNumber(
    "accuracy", lambda s: _ratio(s.net_correct, s.num_samples), needs_classifier=True, epoch_panel=ACCURACY_PANEL
)
NCC_ACCURACY = SplitNumber(
    "ncc_accuracy", lambda s: _ratio(s.ncc_correct, s.num_samples), by_layer=True, layer_panel=LAYER_NCC_PANEL
)
NCC_DISAGREEMENT = SplitNumber(
    "ncc_disagreement", lambda s: _ratio(s.disagree, s.num_samples), needs_classifier=True,
    per_class=lambda s, c: float(s.disagree_per_class[c] / s.class_counts[c]) if s.class_counts[c] else None,
    per_class_column="NCC disagr.", epoch_panel=NCC_PANEL,
)
SPLIT_NUMBERS = (NUM_SAMPLES, ACCURACY, NCC_ACCURACY, NCC_DISAGREEMENT)


# --- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A number of ``record["metrics"]``, from the statistics of the split that defines them."""

    key: str
    caption: str  # the "meaning" column of measure's table
    compute: Callable | None = None  # metrics.Statistics -> value
    needs_classifier: bool = False  # null without one (files without a classifier, layers)
    headline: SplitNumber | None = None  # instead of compute: this number of the headline split
    by_layer: bool = False  # a row of compare's by-layer view
    epoch_panel: Panel | None = None
    series: str | None = None  # "means" / "classifiers": the colour pair in a shared panel
    layer_panel: Panel | None = None


METRICS = (
    Metric(
        "nc1", "NC1  Tr(Σ_W Σ_B⁺)/C", lambda s: metrics.nc1(s.basis, s.proj_ss, s.num_samples), by_layer=True,
        epoch_panel=NC1_PANEL, layer_panel=LAYER_NC1_PANEL,
    ),
    Metric("nc1_rank", "rank of Σ_B used", lambda s: s.basis.rank),
    Metric(
        "nc1_trace_ratio", "Tr(Σ_W)/Tr(Σ_B)", lambda s: metrics.trace_ratio(s.ss_within, s.centred, s.num_samples),
        by_layer=True, layer_panel=LAYER_TRACE_RATIO_PANEL,
    ),
    Metric(
        "cdnv", "class-distance normalised variance",
        lambda s: metrics.cdnv(s.means_view),
        by_layer=True, layer_panel=LAYER_CDNV_PANEL,
    ),
    Metric(
        "equinorm_means", "NC2  std/mean ‖μ_c−μ_G‖", lambda s: metrics.equinorm(s.means_view), by_layer=True,
        epoch_panel=EQUINORM_PANEL, series="means", layer_panel=LAYER_EQUINORM_PANEL,
    ),
    Metric(
        "equinorm_classifiers", "NC2  std/mean ‖w_c‖", lambda s: metrics.equinorm(s.classifiers_view),
        needs_classifier=True, epoch_panel=EQUINORM_PANEL, series="classifiers",
    ),
    Metric(
        "equiangular_means", "NC2  std cos(μ_c, μ_c')", lambda s: metrics.equiangular(s.means_view), by_layer=True,
        epoch_panel=EQUIANGULAR_PANEL, series="means", layer_panel=LAYER_EQUIANGULAR_PANEL,
    ),
    Metric(
        "equiangular_classifiers", "NC2  std cos(w_c, w_c')", lambda s: metrics.equiangular(s.classifiers_view),
        needs_classifier=True, epoch_panel=EQUIANGULAR_PANEL, series="classifiers",
    ),
    Metric(
        "maxangle_means", "NC2  mean |cos + 1/(C−1)|, means", lambda s: metrics.maxangle(s.means_view), by_layer=True,
        epoch_panel=MAXANGLE_PANEL, series="means", layer_panel=LAYER_MAXANGLE_PANEL,
    ),
    Metric(
        "maxangle_classifiers", "NC2  mean |cos + 1/(C−1)|, classifiers",
        lambda s: metrics.maxangle(s.classifiers_view), needs_classifier=True, epoch_panel=MAXANGLE_PANEL,
        series="classifiers",
    ),
    Metric(
        "etf_distance_means", "NC2  ‖G/‖G‖ − ETF‖, means", lambda s: metrics.etf_distance(s.means_view),
        by_layer=True,
    ),
    Metric(
        "etf_distance_classifiers", "NC2  ‖G/‖G‖ − ETF‖, classifiers",
        lambda s: metrics.etf_distance(s.classifiers_view), needs_classifier=True,
    ),
    Metric(
        "self_duality", "NC3  ‖W/‖W‖ − M/‖M‖‖²", lambda s: metrics.self_duality(s.W, s.centred),
        needs_classifier=True, epoch_panel=SELF_DUALITY_PANEL,
    ),
    Metric(
        "wh_etf_distance", "NC3  ‖WM/‖WM‖ − ETF‖", lambda s: metrics.wh_etf_distance(s.W, s.centred, s.dense),
        needs_classifier=True,
    ),
    Metric(
        "bias_collapse", "bias  ‖W μ_G + b‖", lambda s: metrics.bias_collapse(s.W, s.b, s.mu_g), needs_classifier=True
    ),
    Metric(
        "gnc2_log_mean", "GNC2  mean log 1/‖û_c−û_c'‖",
        lambda s: metrics.gnc2_log_mean(s.means_sweep), by_layer=True,
    ),
    Metric(
        "gnc2_log_var", "GNC2  variance of log 1/‖û_c−û_c'‖",
        lambda s: metrics.gnc2_log_var(s.means_sweep), by_layer=True, epoch_panel=GNC2_PANEL,
        series="means",
    ),
    Metric(
        "duality_cos_mean", "UNC3  mean cos(w_c, μ_c−μ_G)", lambda s: metrics.duality_cos_mean(s.W, s.centred),
        needs_classifier=True,
    ),
    Metric(
        "duality_cos_std", "UNC3  std cos(w_c, μ_c−μ_G)", lambda s: metrics.duality_cos_std(s.W, s.centred),
        needs_classifier=True,
    ),
    Metric(
        "nc5_orthodev", "NC5  mean |cos(μ_c, μ_G^OOD)|", lambda s: metrics.nc5_orthodev(s.means, s.ood_mean),
    ),
    Metric(
        NCC_DISAGREEMENT.key, "NC4  net ≠ nearest class centre", needs_classifier=True, headline=NCC_DISAGREEMENT
    ),
)

# --- derived -------------------------------------------------------------------------------

METRIC_KEYS = tuple(m.key for m in METRICS)
CLASSIFIER_METRICS = tuple(m.key for m in METRICS if m.needs_classifier)
HEADLINE_METRICS = tuple(m.key for m in METRICS if m.headline is not None)
CAPTIONS = {m.key: m.caption for m in METRICS}
LAYER_METRICS = tuple(m.key for m in METRICS if m.by_layer)
SPLIT_KEYS = tuple(n.key for n in SPLIT_NUMBERS)
SPLIT_ROW_KEYS = tuple(n.key for n in SPLIT_NUMBERS if n.in_rows)
LAYER_SPLIT_KEYS = tuple(n.key for n in SPLIT_NUMBERS if n.by_layer)
EPOCH_TITLES = tuple(panel.title for panel in EPOCH_PANELS)
LAYER_TITLES = tuple(panel.title for panel in LAYER_PANELS)


def split_numbers(stats) -> dict:
    """``record["splits"][name]`` of one evaluated split."""
    return {
        n.key: None if n.needs_classifier and not stats.has_classifier else n.compute(stats) for n in SPLIT_NUMBERS
    }


def headline_split(splits, train_split: str) -> str:
    """The split whose numbers the headline metrics (``ncc_disagreement``) are: the test split
    when the file has one, else the split that defines the metrics."""
    return "test" if "test" in splits else train_split


def metric_values(statistics: metrics.Statistics, headline: dict) -> dict:
    """``record["metrics"]``, in registry order; ``headline`` is the headline split's numbers
    (the test split's when there is one, else the split that defines the metrics)."""
    out = {}
    for metric in METRICS:
        if metric.headline is not None:
            out[metric.key] = headline[metric.headline.key]
        elif metric.needs_classifier and statistics.W is None:
            out[metric.key] = None
        else:
            out[metric.key] = metric.compute(statistics)
    return out
