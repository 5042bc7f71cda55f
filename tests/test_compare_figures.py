"""``ncli compare --plot`` / ``--plot-per-class`` (issue 14, item 8): runs grouped by folder or
``--group``, the terminal-phase marker, mathtext labels, labelled log ticks, the per-class heat
maps. Figures are caught on their way to ``save_figure`` and inspected as matplotlib objects.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ncli.cli import app
from ncli.features import write_features
from ncli.measure import registry

pytest.importorskip("matplotlib")

from ncli.compare import plot, plot_per_class  # noqa: E402

runner = CliRunner()
CLASSES, DIM, PER_CLASS = 3, 5, 12


@pytest.fixture
def figures(monkeypatch):
    """Every figure the CLI saves, as (path name, Figure), in order."""
    saved = []
    original = plot.save_figure

    def keep(fig, path, **kw):
        saved.append((str(path), fig))
        return original(fig, path, **kw)

    monkeypatch.setattr(plot, "save_figure", keep)
    return saved


def _compare(args, **kw):
    return runner.invoke(app, ["compare", *args], **kw)


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def _one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("ncli: error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def _write(path, epoch, seed, spread):
    rng = np.random.default_rng(seed)
    means = 3.0 * np.linalg.qr(rng.normal(size=(DIM, CLASSES)))[0].T
    splits = {}
    for split in ("train", "test"):
        y = np.repeat(np.arange(CLASSES), PER_CLASS)
        splits[split] = {"features": means[y] + spread * rng.normal(size=(len(y), DIM)), "labels": y}
    weight = means + 0.5 * rng.normal(size=means.shape)
    write_features(path, splits, num_classes=CLASSES, weight=weight, bias=np.zeros(CLASSES), attrs={"epoch": epoch})
    return str(path)


def _by_title(fig):
    return dict(zip(registry.EPOCH_TITLES, fig.axes))


def _data_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() != plot.TERMINAL_PHASE_GID]


def _markers(ax):
    return [line for line in ax.get_lines() if line.get_gid() == plot.TERMINAL_PHASE_GID]


def _legend_labels(fig):
    return [text.get_text() for text in fig.legends[0].get_texts()]


# --------------------------------------------------------------------------- grouping


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    files = {}
    for run, seed in (("alpha", 1), ("beta", 2)):
        (root / run).mkdir()
        epochs = (1, 4, 16) if run == "alpha" else (2, 8)
        files[run] = [_write(root / run / f"e{e}.h5", e, seed + e, 2.0 / e) for e in epochs]
    return root, files


def test_runs_are_grouped_by_folder_one_colour_and_line_each(two_folders, tmp_path, figures):
    root, files = two_folders
    _ok(_compare([*files["beta"], *files["alpha"], "--plot", str(tmp_path / "f.png")]))
    [(_, fig)] = figures
    nc1 = _by_title(fig)[registry.NC1_PANEL.title]
    lines = _data_lines(nc1)
    assert len(lines) == 2
    assert [list(line.get_xdata()) for line in lines] == [[1, 4, 16], [2, 8]]  # first run: the earliest epoch
    assert lines[0].get_color() != lines[1].get_color()
    labels = _legend_labels(fig)
    assert [label.split("  (")[0] for label in labels[:2]] == ["alpha", "beta"]  # what tells the folders apart
    assert fig.legends[0].get_title().get_text() == "runs"
    # each NC2 panel: means and classifiers per run, told apart by line style
    equinorm = _data_lines(_by_title(fig)[registry.EQUINORM_PANEL.title])
    assert len(equinorm) == 4
    assert {line.get_linestyle() for line in equinorm} == {"-", "-."}
    assert "2 runs (5 checkpoints)" in fig._suptitle.get_text()


def test_group_regex_names_the_runs_by_its_first_group(tmp_path, figures):
    files = [_write(tmp_path / f"{net}_epoch{e:03d}.h5", e, e, 1.0 / e) for net in ("mlp", "cnn") for e in (1, 3, 9)]
    _ok(_compare([*files, "--group", r"(mlp|cnn)_epoch", "--plot", str(tmp_path / "f.svg")]))
    [(_, fig)] = figures
    labels = [label.split("  (")[0] for label in _legend_labels(fig)]
    assert labels[:2] == ["cnn", "mlp"]  # equal epochs: file names in natural order decide
    assert len(_data_lines(_by_title(fig)[registry.NC1_PANEL.title])) == 2
    # no group: the whole match names the run
    figures.clear()
    _ok(_compare([*files, "--group", r"mlp|cnn", "--plot", str(tmp_path / "g.png")]))
    assert [label.split("  (")[0] for label in _legend_labels(figures[0][1])][:2] == ["cnn", "mlp"]


def test_a_stored_run_name_groups_records_of_one_folder(tmp_path, figures):
    records = [_record(f"ckpts/e{e}.h5", e, 0.9, 1.0 / e) for e in (1, 2, 3, 4)]
    for record, run in zip(records, ("seed0", "seed1", "seed0", "seed1")):
        record["run"] = run
    _ok(_compare(["-", "--plot", str(tmp_path / "f.png")], input="".join(json.dumps(r) + "\n" for r in records)))
    fig = figures[0][1]
    assert _legend_labels(fig)[:2] == ["seed0", "seed1"]
    lines = _data_lines(_by_title(fig)[registry.NC1_PANEL.title])
    assert [list(line.get_xdata()) for line in lines] == [[1, 3], [2, 4]]


def test_one_folder_is_one_run_drawn_as_before(two_folders, tmp_path, figures):
    _, files = two_folders
    _ok(_compare([*files["alpha"], "--plot", str(tmp_path / "f.png")]))
    [(_, fig)] = figures
    colors = {line.get_label(): line.get_color() for line in _data_lines(_by_title(fig)[registry.EQUINORM_PANEL.title])}
    assert colors == {"class means": plot.MEANS_COLOR, "classifiers": plot.CLASSIFIERS_COLOR}
    assert fig.legends[0].get_title().get_text() == ""


def test_group_errors_are_one_line(two_folders, tmp_path):
    _, files = two_folders
    out = str(tmp_path / "f.png")
    missed = _compare([*files["alpha"], "--group", "nomatch", "--plot", out])
    assert "does not match" in _one_line_error(missed, 2)
    assert missed.stdout == ""  # refused before the table is printed
    assert "not a regular expression" in _one_line_error(_compare([*files["alpha"], "--group", "(", "--plot", out]), 2)
    assert "--plot" in _one_line_error(_compare([*files["alpha"], "--group", "e"]), 2)
    assert "--by layer" in _one_line_error(_compare([*files["alpha"], "--group", "e", "--by", "layer", "--plot", out]), 2)
    assert not (tmp_path / "f.png").exists()


# --------------------------------------------------------------------------- terminal phase


def _record(file, epoch, train_accuracy, nc1):
    return {
        "schema": "ncli.measure/1", "file": file, "epoch": epoch, "step": None, "layer": None,
        "num_classes": 3, "classes_measured": 3, "min_per_class": None, "feature_dim": 4,
        "splits": {
            "train": {"num_samples": 30, "accuracy": train_accuracy, "ncc_accuracy": 1.0, "ncc_disagreement": 0.0},
            "test": {"num_samples": 30, "accuracy": 0.5, "ncc_accuracy": 0.9, "ncc_disagreement": 0.1},
        },
        "metrics": {"nc1": nc1, "self_duality": 0.5},
        "global_mean": "class", "train_split": "train", "ood": None, "has_classifier": True,
    }


def test_terminal_phase_is_marked_where_train_error_first_reaches_zero(tmp_path, figures):
    records = [
        _record("fast/e1.h5", 1, 0.5, 0.9), _record("fast/e5.h5", 5, 0.99, 0.5), _record("fast/e20.h5", 20, 1.0, 0.2),
        _record("fast/e40.h5", 40, 1.0, 0.1), _record("fast/e60.h5", 60, 0.999, 0.05),
        _record("slow/e1.h5", 1, 0.3, 0.95), _record("slow/e60.h5", 60, 0.9999, 0.6),  # never 1
    ]
    stdin = "".join(json.dumps(r) + "\n" for r in records)
    _ok(_compare(["-", "--plot", str(tmp_path / "f.png")], input=stdin))
    [(_, fig)] = figures
    for ax in fig.axes:
        [marker] = _markers(ax)
        assert list(marker.get_xdata()) == [20, 20]
        assert marker.get_color() == _data_lines(_by_title(fig)[registry.NC1_PANEL.title])[0].get_color()
    labels = _legend_labels(fig)
    assert labels[0] == "fast  (train error 0 at epoch 20)" and labels[1] == "slow"
    assert "train error reaches 0" in labels
    # one run: a grey marker and its own legend line
    figures.clear()
    _ok(_compare(["-", "--plot", str(tmp_path / "g.png")], input="".join(json.dumps(r) + "\n" for r in records[:5])))
    fig = figures[0][1]
    assert [list(m.get_xdata()) for m in _markers(fig.axes[0])] == [[20, 20]]
    assert "train error 0 at epoch 20" in _legend_labels(fig)
    assert plot.terminal_phase([_record("x", 1, None, 1.0)], [1]) is None  # no classifier: no marker


# --------------------------------------------------------------------------- labels and ticks


def _outside_math(text: str) -> str:
    return re.sub(r"\$[^$]*\$", "", text)


def test_labels_render_subscripts_and_norms_as_mathtext(two_folders, tmp_path, figures):
    _, files = two_folders
    _ok(_compare([*files["alpha"], "--plot", str(tmp_path / "f.png")]))
    fig = figures[0][1]
    fig5 = _by_title(fig)[registry.SELF_DUALITY_PANEL.title]
    assert fig5.get_ylabel() == r"$\|W/\|W\|_F - M/\|M\|_F\|_F^2$"
    for ax in fig.axes:
        for text in (ax.get_title(), ax.get_ylabel()):
            assert "_" not in _outside_math(text), text  # no literal "_F", "_W", "_c"
            assert text.count("$") % 2 == 0, text
    fig.canvas.draw()  # mathtext that does not parse fails here


def _labelled_ticks(ax) -> list[str]:
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    return [
        label.get_text() for tick, label in zip(ax.get_yticks(), ax.get_yticklabels())
        if low <= tick <= high and label.get_text()
    ]


@pytest.mark.parametrize("values, least", [((0.62, 0.45, 0.31), 3), ((0.7, 0.1, 0.02), 3), ((0.43, 0.42, 0.41), 2)])
def test_short_log_axes_have_labelled_ticks(tmp_path, figures, values, least):
    records = [_record(f"r/e{e}.h5", e, 1.0, v) for e, v in zip((1, 2, 3), values)]
    _ok(_compare(["-", "--plot", str(tmp_path / "f.png")], input="".join(json.dumps(r) + "\n" for r in records)))
    ax = _by_title(figures[0][1])[registry.NC1_PANEL.title]
    assert ax.get_yscale() == "log"
    labels = _labelled_ticks(ax)
    assert len(labels) >= least, labels
    assert all(float(text) > 0 for text in labels)  # plain numbers, e.g. 0.2, 0.5


def test_by_layer_figure_labels_its_y_axes(tmp_path, figures):
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(CLASSES), PER_CLASS)
    features = rng.normal(size=(len(y), DIM)) + 3 * np.eye(CLASSES, DIM)[y]
    split = {"features": features, "labels": y, "layers": {"block": features + rng.normal(size=features.shape)}}
    path = write_features(tmp_path / "layers.h5", {"train": split}, num_classes=CLASSES, attrs={"epoch": 3})
    _ok(_compare([str(path), "--by", "layer", "--plot", str(tmp_path / "f.png")]))
    fig = figures[0][1]
    assert [ax.get_ylabel() for ax in fig.axes] == [panel.ylabel for panel in registry.LAYER_PANELS]
    assert all(ax.get_ylabel() for ax in fig.axes)


# --------------------------------------------------------------------------- per class


def _class_numbers(path):
    """cos(w_c, μ_c − μ_G), σ_c² / ‖μ_c − μ_G‖² and the pairwise cosines of the centred means
    and of classifiers with them, straight from the file (numpy, float64)."""
    with h5py.File(path, "r") as f:
        features = f["train/features"][...].astype(np.float64)
        labels = f["train/labels"][...]
        weight = f["classifier/weight"][...].astype(np.float64)
    means = np.stack([features[labels == c].mean(0) for c in range(CLASSES)])
    centred = means - means.mean(0)
    unit_means = centred / np.linalg.norm(centred, axis=1)[:, None]
    unit_weight = weight / np.linalg.norm(weight, axis=1)[:, None]
    sigma2 = np.array([((features[labels == c] - means[c]) ** 2).sum(1).mean() for c in range(CLASSES)])
    return {
        "cos": np.diag(unit_weight @ unit_means.T), "variability": sigma2 / (centred**2).sum(1),
        "cos_means": unit_means @ unit_means.T, "cos_classifier_means": unit_weight @ unit_means.T,
    }


def test_per_class_heat_maps_hold_the_files_numbers(two_folders, tmp_path, figures):
    _, files = two_folders
    out = tmp_path / "classes.png"
    _ok(_compare([*files["alpha"], *files["beta"], "--plot-per-class", str(out), "--csv"]))
    assert out.read_bytes().startswith(b"\x89PNG")
    [(_, fig)] = figures
    maps = [ax for ax in fig.axes if ax.images]
    per_run = len(plot_per_class.QUANTITIES) + len(plot_per_class.PAIRWISE)
    assert len(maps) == 2 * per_run  # the maps of two runs
    alpha = {ax.images[0].get_gid(): np.ma.filled(ax.images[0].get_array(), np.nan) for ax in maps[:per_run]}
    assert set(alpha) == {q.key for q in plot_per_class.QUANTITIES} | {"cos_means", "cos_classifier_means"}
    assert alpha["cos_classifier_mean"].shape == (CLASSES, 3)
    for column, path in enumerate(files["alpha"]):
        expected = _class_numbers(path)
        np.testing.assert_allclose(alpha["cos_classifier_mean"][:, column], expected["cos"], rtol=1e-9)
        np.testing.assert_allclose(alpha["variability"][:, column], expected["variability"], rtol=1e-9)
    last = _class_numbers(files["alpha"][-1])  # the pairwise maps: the run's last checkpoint
    np.testing.assert_allclose(alpha["cos_means"], last["cos_means"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(alpha["cos_classifier_means"], last["cos_classifier_means"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.diag(alpha["cos_classifier_means"]), alpha["cos_classifier_mean"][:, -1], rtol=1e-12)
    assert "epoch 16" in [ax for ax in maps if ax.images[0].get_gid() == "cos_means"][0].get_title()


def test_per_class_above_the_limit_keeps_the_least_collapsed_classes(tmp_path, figures):
    classes = plot_per_class.MAX_CLASSES + 36
    rng = np.random.default_rng(5)
    spread = rng.uniform(0.1, 2.0, size=classes)
    record = _record("v/e7.h5", 7, 1.0, 0.3)
    record["per_class"] = [
        {"class": c, "num_samples": 10, "sigma2": float(spread[c]), "mean_dist": 1.0, "classifier_norm": 1.0,
         "cos_classifier_mean": 0.9, "name": None, "ncc_disagreement": {"train": 0.0, "test": 0.1}}
        for c in range(classes)
    ]
    _ok(_compare(["-", "--plot-per-class", str(tmp_path / "v.png")], input=json.dumps(record) + "\n"))
    fig = figures[0][1]
    variability = np.ma.filled(fig.axes[1].images[0].get_array(), np.nan)
    kept = np.sort(np.argsort(-spread)[: plot_per_class.MAX_CLASSES])
    np.testing.assert_allclose(variability[:, 0], spread[kept])
    assert f"{plot_per_class.MAX_CLASSES} least collapsed of {classes} classes" in fig.axes[0].get_ylabel()


def test_malformed_per_class_rows_are_one_line(tmp_path):
    record = _record("r/e1.h5", 1, 1.0, 0.3)
    record["per_class"] = [{"class": "zero", "sigma2": 1.0}]
    out = tmp_path / "v.png"
    stdin = json.dumps(record) + "\n"
    assert "malformed" in _one_line_error(_compare(["-", "--plot-per-class", str(out)], input=stdin), 3)
    record["per_class"] = [{"class": 0, "sigma2": 1.0, "mean_dist": 1.0}]
    record["class_cosines"] = {"classes": [0], "means": [[1.0, 0.0]], "classifier_means": None}
    stdin = json.dumps(record) + "\n"
    assert "malformed" in _one_line_error(_compare(["-", "--plot-per-class", str(out)], input=stdin), 3)
    assert not out.exists()


def test_per_class_without_per_class_rows_is_one_line(tmp_path):
    stdin = json.dumps(_record("r/e1.h5", 1, 1.0, 0.3)) + "\n"
    out = tmp_path / "v.png"
    refused = _compare(["-", "--plot-per-class", str(out)], input=stdin)
    assert "per-class rows" in _one_line_error(refused, 2) and refused.stdout == ""
    assert not out.exists()
    same = _compare(["-", "--plot", str(out), "--plot-per-class", str(out)], input=stdin)
    assert "same file" in _one_line_error(same, 2)


def test_compare_without_a_figure_imports_no_matplotlib(two_folders):
    _, files = two_folders
    code = (
        "import sys; from typer.testing import CliRunner; from ncli.cli import app; "
        f"r = CliRunner().invoke(app, ['compare', *{files['alpha']!r}, '--csv']); "
        "assert r.exit_code == 0, r.output; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
