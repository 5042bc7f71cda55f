"""Refusals and failure modes of ``ncli extract`` (issue 3): one clear line, the right exit
code, and no output file (nor temporary leftovers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, check_against, invoke, make_data, model, ok

ROOT = Path(__file__).resolve().parent.parent
CKPT = str(ROOT / 'fixtures' / 'checkpoints' / 'mlp_epoch0300.pt')
DIGITS = str(ROOT / 'fixtures' / 'digits.npz')


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".ncli-tmp-")]


def _one_line_error(r, code):
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ncli: error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_pickle_without_flag_is_refused(tmp_path, data):
    ck = tmp_path / "whole.pt"
    torch.save(model("Net"), ck)
    out = tmp_path / "out.h5"
    msg = _one_line_error(invoke("extract", ck, "--data", data, "-o", out), 4)
    assert "--trust-checkpoint" in msg and "extract_models.Net" in msg and str(ck) in msg
    assert not out.exists() and not _leftovers(tmp_path)
    # with --arch too: the file is never unpickled without the flag
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out), 4)
    assert not out.exists()


class _RunsACommand:
    """Unpickling this runs a shell command (what a malicious checkpoint would hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_custom_objects_beside_the_weights_are_never_run(tmp_path, data):
    """A training checkpoint's weights are read; the custom objects beside them are
    placeholders: nothing they name is imported or run (issue 12)."""
    ck = tmp_path / "dict.pt"
    m = model("Net")
    torch.save({"state_dict": m.state_dict(), "config": em.Net(), "cls": em.Net}, ck)
    # the module the objects name is gone: importing it would fail
    ck.write_bytes(ck.read_bytes().replace(b"extract_models", b"extract_modelz"))
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"))
    d = check_against(m, out, data)
    assert "extract_modelz.Net" in d["attrs"]["objects_not_loaded"]
    # a call torch blocks outright (os.system) is refused, and never made
    marker = tmp_path / "ran"
    torch.save({"state_dict": m.state_dict(), "hook": _RunsACommand(marker)}, ck)
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "--force"), 4)
    assert "system" in msg and not marker.exists()
    # a whole pickled model is still refused: its weights are not a state_dict of tensors
    whole = tmp_path / "whole.pt"
    torch.save({"model": m, "epoch": 3}, whole)
    msg = _one_line_error(invoke("extract", whole, "--arch", arch("Net"), "--data", data, "-o", out, "--force"), 4)
    assert "extract_models.Net" in msg and "builtins.dict" not in msg


def test_trusted_pickle_whose_class_is_gone(tmp_path, data):
    ck = tmp_path / "whole.pt"
    torch.save(model("Net"), ck)
    raw = ck.read_bytes()
    # rename the module the pickle refers to (same length keeps the zip valid)
    ck.write_bytes(raw.replace(b"extract_models", b"extract_modelz"))
    msg = _one_line_error(invoke("extract", ck, "--trust-checkpoint", "--data", data, "-o", tmp_path / "o.h5"), 3)
    assert "extract_modelz" in msg and "PYTHONPATH" in msg


def test_arch_that_does_not_fit(tmp_path, data):
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    out = tmp_path / "out.h5"
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Projection"), "--data", data, "-o", out), 3)
    assert "does not fit" in msg and "proj.weight" in msg and "body.2.weight" in msg
    msg = _one_line_error(
        invoke("extract", ck, "--arch", arch("make_net"), "--arch-arg", "hidden=7", "--data", data, "-o", out), 3
    )
    assert "shape mismatch" in msg and "body.0.weight (16, 12) in the file vs (7, 12)" in msg
    assert not out.exists() and not _leftovers(tmp_path)


def test_labels_beyond_the_models_classes(tmp_path):
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    data = make_data(tmp_path, n_classes=em.C + 1)
    out = tmp_path / "out.h5"
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out), 3)
    assert f"label {em.C} is outside the model's {em.C} classes" in msg
    assert not out.exists() and not _leftovers(tmp_path)


def test_existing_output_refused_before_the_model_runs(tmp_path, data):
    ck = tmp_path / "net.pt"
    torch.save(model("Exploding").state_dict(), ck)
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Exploding"), "--data", data, "-o", out), 4)
    assert "--force" in msg and out.read_bytes() == b"precious"
    # with --force the model does run (and fails: the user's model raising is an input error, 3,
    # not an ncli bug), and out is left untouched
    r = invoke("extract", ck, "--arch", arch("Exploding"), "--data", data, "-o", out, "--force")
    assert r.exit_code == 3 and "the model ran" in r.output and out.read_bytes() == b"precious"


def test_force_replaces(tmp_path, data):
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "--force", "-q"))
    assert out.read_bytes()[:4] == b"\x89HDF"


def _arch_modules():
    # --arch file.py:Name imports the file under its own module name
    return [m for n, m in sys.modules.items() if n.startswith("ncli_arch_extract_models")]


def test_ctrl_c_leaves_nothing(tmp_path, data):
    for m in _arch_modules():
        m.Interrupting.calls = 0
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    out = tmp_path / "out.h5"
    r = invoke("extract", ck, "--arch", arch("Interrupting"), "--data", data, "-o", out, "-b", "4", "-q")
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output
    assert [m.Interrupting.calls for m in _arch_modules()] == [4]  # interrupted mid-run, after writing began
    assert not out.exists() and not _leftovers(tmp_path)


def test_bad_inputs_are_one_line(tmp_path, data):
    out = tmp_path / "out.h5"
    _one_line_error(invoke("extract", tmp_path / "missing.pt", "--data", data, "-o", out), 3)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert "not a checkpoint" in _one_line_error(invoke("extract", junk, "--data", data, "-o", out), 3)
    trunc = tmp_path / "trunc.pt"
    torch.save(model("Net").state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:300])
    _one_line_error(invoke("extract", trunc, "--arch", arch("Net"), "--data", data, "-o", out), 3)
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    assert "--arch" in _one_line_error(invoke("extract", ck, "--data", data, "-o", out), 2)
    assert "no such file" in _one_line_error(invoke("extract", ck, "--arch", "nofile.py:Net", "--data", data, "-o", out), 3)
    assert "has no 'Nope'" in _one_line_error(invoke("extract", ck, "--arch", arch("Nope"), "--data", data, "-o", out), 3)
    assert "expected path/to/file.py:Name" in _one_line_error(invoke("extract", ck, "--arch", "Net", "--data", data, "-o", out), 2)
    assert "no dataset 'x_val'" in _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", f"val={data}", "-o", out), 3)
    assert "not an array file" in _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={junk}", "-o", out), 3)
    assert "output folder" in _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "no" / "o.h5"), 3)
    assert "HDF5" in _one_line_error(invoke("extract", _h5(tmp_path), "--data", data, "-o", out), 3)
    assert not out.exists()


def _h5(tmp_path):
    import h5py

    p = tmp_path / "feat.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    return p


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_missing_cuda_is_an_environment_problem(tmp_path, data):
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5", "--device", "cuda"), 5)
    assert "CUDA is not available" in msg


def test_missing_safetensors_names_the_extra(tmp_path, data, monkeypatch):
    st = pytest.importorskip("safetensors.torch")
    ck = tmp_path / "w.safetensors"
    st.save_file(model("Net").state_dict(), str(ck))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5"), 5)
    assert "pip install 'neural-collapse-cli[safetensors]'" in msg


def test_missing_torchvision_names_the_extra(tmp_path, data):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    msg = _one_line_error(invoke("extract", ck, "--arch", "torchvision:resnet18", "--data", data, "-o", tmp_path / "o.h5"), 5)
    assert "pip install 'neural-collapse-cli[vision]'" in msg
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    msg = _one_line_error(invoke("extract", ck, "--arch", arch("Net"), "--data", f"train={folder}", "-o", tmp_path / "o.h5"), 5)
    assert "pip install 'neural-collapse-cli[vision]'" in msg


def test_cli_module_does_not_import_torch():
    code = "import sys, ncli.cli, ncli.cli.extract; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", ["extract", "inspect"])
def test_without_torch_one_line_naming_the_extra(tmp_path, command):
    """measure/compare install without torch; extract and inspect then say which extra to add."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` fail as if not installed
        "from ncli.cli import main; sys.argv = ['ncli'] + sys.argv[1:]; main()"
    )
    args = [command, CKPT] + (["--data", DIGITS, "-o", str(tmp_path / "o.h5")] if command == "extract" else [])
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert r.stderr.strip() == (
        f"ncli: error: ncli {command} needs PyTorch, which is not installed: pip install 'neural-collapse-cli[torch]'"
    )
    assert not (tmp_path / "o.h5").exists()
