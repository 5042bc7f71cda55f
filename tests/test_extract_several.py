"""``ncli extract A.pt B.pt ... -o FOLDER/``: several checkpoints in one call, one file each."""

from __future__ import annotations

import pytest
import torch

from extract_util import arch, check_against, invoke, make_data, model, ok, read
from ncli.outputs import TEMP_PREFIX


@pytest.fixture
def runs(tmp_path):
    """Two checkpoints of one architecture with different weights, and a data file."""
    checkpoints, models = [], []
    for seed, name in ((0, "ep5.pt"), (1, "ep20.pt")):
        m = model("Net", seed=seed)
        torch.save(m.state_dict(), tmp_path / name)
        checkpoints.append(tmp_path / name)
        models.append(m)
    return tmp_path, checkpoints, models, make_data(tmp_path)


def extract(checkpoints, data, out, *extra):
    return invoke("extract", *checkpoints, "--arch", arch("Net"), "--data", data, "-o", out, *extra)


def test_several_checkpoints_into_a_new_folder(runs):
    root, checkpoints, models, data = runs
    r = ok(extract(checkpoints, data, f"{root}/runs/"))
    assert f"created the output folder {root}/runs/" in r.stderr
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["ep20.h5", "ep5.h5"]
    for checkpoint, m in zip(checkpoints, models):  # each file is its own checkpoint's features
        check_against(m, root / "runs" / (checkpoint.stem + ".h5"), data)
        assert read(root / "runs" / (checkpoint.stem + ".h5"))["attrs"]["source_checkpoint"] == str(checkpoint)


def test_the_data_is_opened_once_for_several_checkpoints(runs, monkeypatch):
    from ncli.extract import job

    root, checkpoints, _, data = runs
    calls = []
    real = job.open_sources
    monkeypatch.setattr(job, "open_sources", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    ok(extract(checkpoints, data, f"{root}/runs/", "-q"))
    assert len(calls) == 1
    assert len(list((root / "runs").iterdir())) == 2


def test_new_folder_with_a_trailing_slash_is_never_a_file(runs):
    root, checkpoints, models, data = runs
    ok(extract(checkpoints[:1], data, f"{root}/newfolder/", "-q"))
    assert (root / "newfolder").is_dir()
    check_against(models[0], root / "newfolder" / "ep5.h5", data)


def test_an_existing_folder_without_slash_takes_the_files(runs):
    root, checkpoints, _, data = runs
    (root / "runs").mkdir()
    r = ok(extract(checkpoints, data, root / "runs", "-q"))
    assert "created" not in r.stderr
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["ep20.h5", "ep5.h5"]


def test_several_checkpoints_with_a_file_output_is_one_line_error(runs):
    root, checkpoints, _, data = runs
    r = extract(checkpoints, data, root / "out.h5", "-q")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"ncli: error: -o {root / 'out.h5'}: 2 checkpoints need -o FOLDER/ (one file each, named after the checkpoint); "
        "a file name takes one checkpoint"
    ]
    assert not (root / "out.h5").exists()


def test_existing_outputs_are_checked_before_any_checkpoint_runs(runs):
    root, checkpoints, _, data = runs
    (root / "runs").mkdir()
    (root / "runs" / "ep20.h5").write_bytes(b"precious")
    r = extract(checkpoints, data, f"{root}/runs/", "-q")
    assert r.exit_code == 4 and "ep20.h5: already exists; pass --force" in r.stderr
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["ep20.h5"]  # ep5 was not written either
    assert (root / "runs" / "ep20.h5").read_bytes() == b"precious"
    ok(extract(checkpoints, data, f"{root}/runs/", "-q", "--force"))
    assert read(root / "runs" / "ep20.h5")["features"].shape[0] > 0


def test_a_failing_checkpoint_stops_the_run_and_says_what_was_written(runs):
    root, checkpoints, _, data = runs
    broken = root / "ep10.pt"
    broken.write_bytes(checkpoints[0].read_bytes()[:200])  # truncated
    r = extract([checkpoints[0], broken, checkpoints[1]], data, f"{root}/runs/", "-q")
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(f"ncli: error: {broken}")
    assert f"stopped at {broken}: 1 of 3 outputs written ({root}/runs/ep5.h5); 2 not written" in r.stderr
    names = sorted(p.name for p in (root / "runs").iterdir())
    assert names == ["ep5.h5"], names  # no ep10.h5, no temporary file, ep20 never started
    assert not any(name.startswith(TEMP_PREFIX) for name in names)


def test_missing_parents_are_created_as_mkdir_p(runs):
    root, checkpoints, models, data = runs
    r = ok(extract(checkpoints, data, f"{root}/runs/mlp/"))
    assert f"created the output folder {root}/runs/mlp/" in r.stderr
    check_against(models[1], root / "runs" / "mlp" / "ep20.h5", data)
    (root / "file").write_bytes(b"x")
    r = extract(checkpoints, data, f"{root}/file/sub/", "-q")
    assert r.exit_code == 3 and f"cannot create the output folder: {root}/file is not a folder" in r.stderr


def test_a_run_that_writes_nothing_leaves_no_new_folder(runs):
    root, checkpoints, _, data = runs
    r = extract(checkpoints, root / "missing.npz", f"{root}/runs/", "-q")  # bad data: before the folder
    assert r.exit_code == 3 and not (root / "runs").exists()
    broken = root / "ep1.pt"
    broken.write_bytes(checkpoints[0].read_bytes()[:200])  # the first checkpoint fails
    r = extract([broken, checkpoints[1]], data, f"{root}/runs/", "-q")
    assert r.exit_code == 3 and not (root / "runs").exists()
    (root / "kept").mkdir()  # an empty folder that was there before stays
    r = extract([broken, checkpoints[1]], data, f"{root}/kept/a/b/", "-q")
    assert r.exit_code == 3 and (root / "kept").is_dir() and not (root / "kept" / "a").exists()


def test_two_checkpoints_with_one_stem_are_refused(runs):
    root, checkpoints, _, data = runs
    (root / "other").mkdir()
    twin = root / "other" / "ep5.pt"
    twin.write_bytes(checkpoints[0].read_bytes())
    r = extract([checkpoints[0], twin], data, f"{root}/runs/", "-q")
    assert r.exit_code == 2 and "would both write" in r.stderr
    assert not (root / "runs").exists()


def test_help_documents_several_checkpoints():
    r = ok(invoke("extract", "--help"))
    text = " ".join(r.stdout.split())
    assert "CHECKPOINT" in text and "-o runs/" in text and "FOLDER/" in text
