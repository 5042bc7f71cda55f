"""End to end on the committed fixtures: checkpoints → ``ncli extract`` → ``ncli measure`` →
``ncli compare``, asserting the collapse the fixture MLP was trained to show (issue 4).

The fixtures (``fixtures/make_fixtures.py``) are an MLP trained on scikit-learn's digits with
checkpoints across training; NC1 must fall by at least 10× from the first checkpoint to the
last, and the last checkpoint must fit the train split exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ncli.cli import app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MODELS = FIXTURES / "models.py"
DIGITS = FIXTURES / "digits.npz"

runner = CliRunner()


def _checkpoints() -> list[Path]:
    # mlp_epochNNNN.pt (state dicts with epoch/step); not the *_pickled variant
    ckpts = sorted(p for p in (FIXTURES / "checkpoints").glob("mlp_epoch*.pt") if re.fullmatch(r"mlp_epoch\d+", p.stem))
    if not ckpts:
        pytest.skip("fixtures/checkpoints/mlp*.pt not present (run fixtures/make_fixtures.py)")
    for need in (MODELS, DIGITS):
        if not need.exists():
            pytest.skip(f"{need.relative_to(ROOT)} not present (run fixtures/make_fixtures.py)")
    return ckpts


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


@pytest.mark.slow
def test_checkpoints_extract_measure_compare_show_collapse(tmp_path):
    pytest.importorskip("torch")
    ckpts = _checkpoints()
    assert len(ckpts) >= 2
    features = []
    for ckpt in ckpts:
        out = tmp_path / f"{ckpt.stem}.h5"
        _ok(
            runner.invoke(
                app,
                [
                    "extract",
                    str(ckpt),
                    "--arch",
                    f"{MODELS}:MLP",
                    "--data",
                    f"train={DIGITS}",
                    "--data",
                    f"test={DIGITS}",
                    "-o",
                    str(out),
                    "--quiet",
                ],
            )
        )
        assert out.exists()
        features.append(out)

    # measure in reverse order: compare must put the runs back in epoch order
    lines = _ok(runner.invoke(app, ["measure", *map(str, reversed(features)), "--json"])).stdout
    assert len(lines.splitlines()) == len(features)
    out = json.loads(_ok(runner.invoke(app, ["compare", "-", "--json"], input=lines)).stdout)
    runs = out["runs"]
    epochs = [r["epoch"] for r in runs]
    assert None not in epochs, "extract should record each checkpoint's epoch"
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    assert [Path(r["file"]).name for r in runs] == [f.name for f in features]  # names sort by epoch

    first, last = runs[0], runs[-1]
    assert first["metrics"]["nc1"] / last["metrics"]["nc1"] >= 10, [r["metrics"]["nc1"] for r in runs]
    assert last["splits"]["train"]["accuracy"] == 1.0
    assert out["trend"]["nc1"] <= 0.1

    # compare on the feature files directly gives the same records; the figure is drawn
    pytest.importorskip("matplotlib")
    png = tmp_path / "collapse.png"
    direct = json.loads(
        _ok(runner.invoke(app, ["compare", *map(str, features), "--json", "--plot", str(png)])).stdout
    )
    assert direct["runs"] == runs
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
