"""The bad-input matrix for ``ncli extract`` and ``ncli inspect`` (issue 5).

Every case: the documented exit code (README "Errors and exit codes": 2 usage, 3 input,
4 refused, 5 environment), one or two lines on stderr starting ``ncli: error:`` (typer's own
parser errors, exit 2, print typer's usage box instead), no traceback, nothing on stdout, every
file that existed before byte-identical afterwards, no output file and no ``.ncli-tmp-*``
leftover. Some rows repeat cases of tests/test_extract_refusals.py on purpose: here they are
also checked for untouched files and leftovers.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, make_data, model, runner
from ncli.cli import app

try:
    import torchvision  # noqa: F401

    HAS_TORCHVISION = True
except ImportError:
    HAS_TORCHVISION = False


def _invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (bytecode caches of --arch files aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".ncli-tmp-*")]


def check_clean_failure(res, code: int, needle: str | None, root: Path, before: dict, out: Path | None = None):
    """The contract of every row of the matrix."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert res.stdout == "", res.stdout
    lines = res.stderr.strip().splitlines()
    if code == 2 and lines and lines[0].startswith("Usage:"):  # typer's parser: its usage box
        assert "Error" in res.stderr
    else:
        assert 1 <= len(lines) <= 2, res.stderr
        assert lines[0].startswith("ncli: error: "), res.stderr
    if needle is not None:
        assert needle in res.stderr, res.stderr
    after = snapshot(root)
    changed = [k for k, digest in before.items() if after.get(k) != digest]
    assert not changed, f"changed or removed: {changed}"
    assert not leftovers(root), leftovers(root)
    if out is not None and str(out.relative_to(root)) not in before:
        assert not out.exists()


# ---------------------------------------------------------------------------------------
# the world each case starts from
# ---------------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    ck: Path  # a state_dict of extract_models.Net
    data: Path  # x_train/y_train, x_test/y_test
    out: Path

    def npz(self, name: str, **arrays) -> Path:
        p = self.root / name
        np.savez(p, **arrays)
        return p

    def h5(self, name: str, **arrays) -> Path:
        p = self.root / name
        with h5py.File(p, "w") as f:
            for k, v in arrays.items():
                f[k] = v
        return p

    def file(self, name: str, content: bytes | str) -> Path:
        p = self.root / name
        if isinstance(content, str):
            p.write_text(content)
        else:
            p.write_bytes(content)
        return p

    def arch_file(self, name: str, content: bytes | str, attr: str = "Net") -> str:
        return f"{self.file(name, content)}:{attr}"

    def args(self, *, ck=None, arch_spec=None, data=None, out=None, extra=()):
        """``ncli extract`` with the good defaults, one part replaced."""
        a = ["extract", ck or self.ck]
        if arch_spec is not False:
            a += ["--arch", arch_spec or arch("Net")]
        for d in data if isinstance(data, (list, tuple)) else [data or self.data]:
            a += ["--data", d]
        return a + ["-o", out or self.out, "-q", *extra]


@pytest.fixture
def world(tmp_path):
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    return World(tmp_path, ck, make_data(tmp_path), tmp_path / "out.h5")


X = np.random.default_rng(3).normal(size=(40, em.IN)).astype(np.float32)
Y = (np.arange(40) % em.C).astype(np.int64)


def _npy(arr: np.ndarray, claim: bytes | None = None, real: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    raw = buf.getvalue()
    return raw.replace(real, claim) if claim else raw


def _lying_npz(w: World) -> Path:
    """An .npz whose members' headers promise more rows than they hold."""
    p = w.root / "lying.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", _npy(X, b"(99, 12)", b"(40, 12)"))
        z.writestr("y.npy", _npy(Y, b"(99,)", b"(40,)"))
    return p


def _corrupt_h5(w: World) -> Path:
    """An HDF5 data file that opens fine but whose 4th chunk of inputs is damaged: the run
    fails mid-way, after the temporary output file exists."""
    p = w.root / "corrupt.h5"
    x = np.random.default_rng(0).normal(size=(2000, em.IN)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=x, chunks=(200, em.IN), compression="gzip")
        f["y"] = (np.arange(2000) % em.C).astype(np.int64)
        info = f["x"].id.get_chunk_info(3)
    raw = bytearray(p.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    p.write_bytes(bytes(raw))
    return p


def _truncated_h5(w: World) -> Path:
    full = w.h5("d.h5", x=np.zeros((3000, em.IN), np.float32), y=np.zeros(3000, np.int64))
    return w.file("t.h5", full.read_bytes()[:4000])


def _pickled_model(w: World) -> Path:
    p = w.root / "whole.pt"
    torch.save(model("Net"), p)
    return p


def _truncated_zip_ckpt(w: World) -> Path:
    raw = w.ck.read_bytes()
    return w.file("trunc.pt", raw[: len(raw) // 2])


def _checkpoint_with(w: World, name: str, **entries) -> Path:
    p = w.root / name
    torch.save({**entries, "state_dict": model("Net").state_dict()}, p)
    return p


def _weights_like(w: World, name: str, change) -> Path:
    p = w.root / name
    sd = model("Net").state_dict()
    torch.save({k: change(v) if k.startswith("fc.") else v for k, v in sd.items()}, p)
    return p


def _fifo(w: World, name: str) -> Path:
    import os

    p = w.root / name
    os.mkfifo(p)
    return p


def _nested_h5(w: World) -> Path:
    """x_<split>/y_<split> pairs whose split name holds '/' (groups x_a and y_a)."""
    p = w.root / "nested.h5"
    with h5py.File(p, "w") as f:
        f["x_a/b"], f["y_a/b"] = X, Y
    return p


def _h5_with_external_link(w: World) -> Path:
    other = w.h5("other.h5", x=X, y=Y)
    p = w.root / "linked.h5"
    with h5py.File(p, "w") as f:
        f["x"] = h5py.ExternalLink(str(other), "/x")
        f["y"] = Y
    return p


def _rezipped(src: Path, dst: Path, *, compress_type=None, declare=None, overlap=False) -> Path:
    """``src`` (a zip) rewritten: members recompressed, a member's size declared as ``declare``,
    or the last member pointing at the first one's bytes (an overlapping zip bomb)."""
    import struct
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            info = zipfile.ZipInfo(item.filename, item.date_time)
            info.compress_type = compress_type if compress_type is not None else item.compress_type
            zout.writestr(info, zin.read(item.filename))
    raw = bytearray(dst.read_bytes())
    central = [i for i in range(len(raw)) if raw[i : i + 4] == b"PK\x01\x02"]
    if declare is not None:  # the first member claims `declare` bytes (central directory and local header)
        struct.pack_into("<I", raw, central[0] + 24, declare)
        local = struct.unpack_from("<I", raw, central[0] + 42)[0]
        struct.pack_into("<I", raw, local + 22, declare)
    if overlap:
        first = struct.unpack_from("<I", raw, central[0] + 42)[0]
        struct.pack_into("<I", raw, central[-1] + 42, first)
    dst.write_bytes(bytes(raw))
    return dst


def _deflated(w: World, name: str) -> Path:
    import zipfile

    p = w.root / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy(np.zeros((40, em.IN), np.float32)))
        z.writestr("y.npy", _npy(Y))
    return p


# name: (build args from the world, expected exit code, text in the message)
EXTRACT_CASES = {
    # --- the checkpoint
    "missing checkpoint": (lambda w: w.args(ck=w.root / "missing.pt"), 3, "no such file"),
    "checkpoint is a directory": (lambda w: w.args(ck=w.root), 3, "is a directory"),
    "junk bytes as checkpoint": (lambda w: w.args(ck=w.file("junk.pt", b"\x00junk" * 50)), 3, "not a checkpoint"),
    "empty checkpoint file": (lambda w: w.args(ck=w.file("empty.pt", b"")), 3, "not a checkpoint"),
    "damaged pickle as checkpoint": (lambda w: w.args(ck=w.file("p.pt", b"\x80\x02junk")), 3, "damaged"),
    "truncated checkpoint": (lambda w: w.args(ck=_truncated_zip_ckpt(w)), 3, "trunc.pt"),
    "zip that is no checkpoint": (lambda w: w.args(ck=w.file("z.pt", b"PK\x03\x04" + b"\x00" * 64)), 3, "not a checkpoint"),
    "checkpoint holds a list": (lambda w: (torch.save([1, 2], w.root / "l.pt"), w.args(ck=w.root / "l.pt"))[1], 3, "holds a list"),
    "checkpoint holds no tensors": (lambda w: (torch.save({}, w.root / "e.pt"), w.args(ck=w.root / "e.pt"))[1], 3, "no state_dict found"),
    "feature file as checkpoint": (lambda w: w.args(ck=w.h5("feat.h5", x=np.zeros(3))), 3, "HDF5"),
    "pickled model without --trust-checkpoint": (lambda w: w.args(ck=_pickled_model(w), arch_spec=False), 4, "--trust-checkpoint"),
    # --- --arch
    "state_dict without --arch": (lambda w: w.args(arch_spec=False), 2, "--arch"),
    "missing --arch file": (lambda w: w.args(arch_spec=f"{w.root / 'nope.py'}:Net"), 3, "no such file"),
    "--arch file with a syntax error": (lambda w: w.args(arch_spec=w.arch_file("bad.py", "def Net(:")), 3, "SyntaxError"),
    "--arch file of junk bytes": (lambda w: w.args(arch_spec=w.arch_file("junk.py", b"\x00\xff")), 3, "importing"),
    "--arch file that raises": (lambda w: w.args(arch_spec=w.arch_file("r.py", "raise ImportError(1)")), 3, "ImportError"),
    "--arch file that calls sys.exit": (lambda w: w.args(arch_spec=w.arch_file("x.py", "import sys; sys.exit(3)")), 3, "SystemExit"),
    "--arch is a directory": (lambda w: w.args(arch_spec=f"{w.root}:Net"), 3, "cannot import"),
    "--arch name missing in the file": (lambda w: w.args(arch_spec=arch("Nope")), 3, "has no 'Nope'"),
    "--arch not callable": (lambda w: w.args(arch_spec=w.arch_file("nc.py", "Net = 3")), 3, "not a class or function"),
    "--arch returns no module": (lambda w: w.args(arch_spec=w.arch_file("ni.py", "def Net():\n    return 3\n")), 3, "not a torch.nn.Module"),
    "--arch malformed": (lambda w: w.args(arch_spec="Net"), 2, "expected path/to/file.py:Name"),
    "--arch that does not fit the weights": (lambda w: w.args(arch_spec=arch("Projection")), 3, "does not fit"),
    "--arch-arg malformed": (lambda w: w.args(extra=["--arch-arg", "5"]), 2, "key=value"),
    "--arch-arg the model rejects": (lambda w: w.args(extra=["--arch-arg", "colour=1"]), 3, "colour"),
    # --- the data
    "missing data file": (lambda w: w.args(data=w.root / "nope.npz"), 3, "no such file"),
    "data is junk bytes": (lambda w: w.args(data="train=" + str(w.file("d.bin", b"junk" * 10))), 3, "not an array file"),
    "data folder (image folder)": (lambda w: w.args(data=f"train={w.root}"), 3 if HAS_TORCHVISION else 5, None),
    "truncated .npz": (lambda w: w.args(data=w.file("t.npz", w.data.read_bytes()[:300])), 3, "cannot read"),
    "truncated .npz with a split": (lambda w: w.args(data="train=" + str(w.file("t.npz", w.data.read_bytes()[:-50]))), 3, "cannot read"),
    "truncated .h5": (lambda w: w.args(data=_truncated_h5(w)), 3, "cannot read"),
    ".npz member shorter than its header": (lambda w: w.args(data=_lying_npz(w)), 3, "cannot read"),
    "damaged HDF5 chunk, mid-run": (lambda w: w.args(data=_corrupt_h5(w), extra=["-b", "64"]), 3, "cannot read rows"),
    "no x/y datasets": (lambda w: w.args(data=w.npz("k.npz", a=X, b=Y)), 3, "no x/y"),
    "unknown split": (lambda w: w.args(data=f"val={w.data}"), 3, "no dataset 'x_val'"),
    "--x-key missing": (lambda w: w.args(data=f"train={w.data}", extra=["--x-key", "inputs"]), 3, "no dataset 'inputs'"),
    "inputs != labels": (lambda w: w.args(data=w.npz("r.npz", x=X, y=Y[:-1])), 3, "40 inputs in 'x' but 39 labels"),
    "labels 2-D": (lambda w: w.args(data=w.npz("r.npz", x=X, y=Y[:, None])), 3, "must be 1-D"),
    "labels not integers": (lambda w: w.args(data=w.npz("r.npz", x=X, y=Y.astype(np.float32))), 3, "must be integers"),
    "negative label": (lambda w: w.args(data=w.npz("r.npz", x=X, y=np.r_[Y[:-1], -1])), 3, "label -1 is outside"),
    "labels beyond the model's classes": (
        lambda w: w.args(data=w.h5("r.h5", x=X, y=np.r_[Y[:-1], em.C])), 3, f"label {em.C} is outside the model's {em.C} classes"
    ),
    "empty split": (lambda w: w.args(data=w.npz("r.npz", x=X[:0], y=Y[:0])), 3, "no samples"),
    "inputs not numbers": (lambda w: w.args(data=w.npz("r.npz", x=np.array(["a"] * 40), y=Y)), 3, "expected numbers"),
    "inputs of the wrong shape for the model": (lambda w: w.args(data=w.npz("r.npz", x=X[:, :5], y=Y)), 3, "the model fails on the first batch"),
    "1-D inputs": (lambda w: w.args(data=w.npz("r.npz", x=X[:, 0], y=Y)), 3, "the model fails on the first batch"),
    "NaN in every input of the first batch": (lambda w: w.args(data=w.npz("r.npz", x=np.full_like(X, np.nan), y=Y)), 3, "NaN or Inf"),
    "split given twice": (lambda w: w.args(data=[f"train={w.data}", f"train={w.data}"]), 2, "given twice"),
    "nothing after =": (lambda w: w.args(data="train="), 2, "nothing after '='"),
    # --- the output
    "missing output folder": (lambda w: w.args(out=w.root / "no" / "out.h5"), 3, "output folder"),
    "output is a file where a folder is meant": (lambda w: w.args(out=str(w.file("f", b"x")) + "/"), 3, "is a file, not a folder"),
    "existing output without --force": (lambda w: (w.file("out.h5", b"precious"), w.args())[1], 4, "--force"),
    "output would replace the checkpoint": (lambda w: w.args(out=w.ck, extra=["--force"]), 2, "the checkpoint itself"),
    "output would replace the data": (lambda w: w.args(out=w.data, extra=["--force"]), 2, "the data file"),
    # --- issue 15: values and files the format or ncli cannot hold
    "--epoch beyond int64": (lambda w: w.args(extra=["--epoch", str(10**30)]), 2, "--epoch 1000000000000000000000000000000: beyond the int64"),
    "--step beyond int64": (lambda w: w.args(extra=["--step", str(-(2**63) - 1)]), 2, "--step -9223372036854775809"),
    "a 5000-digit epoch in the checkpoint": (lambda w: w.args(ck=_checkpoint_with(w, "e.pt", epoch="9" * 5000)), 3, "'epoch' is a number of thousands of digits"),
    "an epoch of 1e300 in the checkpoint": (lambda w: w.args(ck=_checkpoint_with(w, "e.pt", epoch=1e300)), 3, "beyond the int64 range"),
    "a step of 2^63 in the checkpoint": (lambda w: w.args(ck=_checkpoint_with(w, "e.pt", global_step=torch.tensor(2.0**63))), 3, "'global_step' is 9223372036854775808"),
    "a split named classifier in a bare --data file": (lambda w: w.args(data=w.npz("r.npz", x_classifier=X, y_classifier=Y)), 3, "cannot hold a split named 'classifier'"),
    "an empty split name in a bare --data file": (lambda w: w.args(data=w.npz("r.npz", x_=X, y_=Y)), 3, "split named ''"),
    "a split name with '/' in a bare --data file": (lambda w: w.args(data=_nested_h5(w)), 3, "split named 'a/b'"),
    "--data .=FILE": (lambda w: w.args(data=f".={w.data}"), 2, "split named '.'"),
    "an all-NaN classifier": (lambda w: w.args(ck=_weights_like(w, "nan.pt", lambda v: torch.full_like(v, float("nan")))), 3, "classifier 'fc': its weight holds NaN or Inf"),
    "complex classifier weights": (lambda w: w.args(ck=_weights_like(w, "cplx.pt", lambda v: v.to(torch.complex64))), 3, "hold complex numbers"),
    "checkpoint is a FIFO": (lambda w: w.args(ck=_fifo(w, "ck.pt")), 3, "is not a regular file"),
    "--data is a FIFO": (lambda w: w.args(data=f"train={_fifo(w, 'd.npz')}"), 3, "not a regular file"),
    "--data is a FIFO, bare": (lambda w: w.args(data=_fifo(w, "d.npz")), 3, "not a regular file"),
    "output is a FIFO, --force": (lambda w: w.args(out=_fifo(w, "o.h5"), extra=["--force"]), 3, "is a FIFO, not a regular file"),
    "output name longer than the file system allows": (lambda w: w.args(out=w.root / ("o" * 300 + ".h5")), 3, "longer than the file system allows"),
    "HDF5 data with an external link": (lambda w: w.args(data=_h5_with_external_link(w)), 3, "is an external link to"),
    "checkpoint recompressed with bzip2": (lambda w: w.args(ck=_rezipped(w.ck, w.root / "bz.pt", compress_type=12)), 3, "compression method 12"),
    "checkpoint member declaring impossible size": (lambda w: w.args(ck=_rezipped(w.ck, w.root / "big.pt", compress_type=8, declare=2**31)), 3, "more than deflate can expand"),
    "overlapping .npz members": (lambda w: w.args(data=_rezipped(_deflated(w, "a.npz"), w.root / "o.npz", overlap=True)), 3, "overlap"),
    # --- usage
    "unknown option": (lambda w: w.args(extra=["--bogus"]), 2, "--bogus"),
    "batch size 0": (lambda w: w.args(extra=["-b", "0"]), 2, "--batch-size"),
    "unknown device": (lambda w: w.args(extra=["--device", "tpu"]), 2, "--device tpu"),
    "unknown --pool": (lambda w: w.args(extra=["--pool", "median"]), 2, "median"),
    "unknown --layer": (lambda w: w.args(extra=["--layer", "nope"]), 2, "--layer nope"),
}


@pytest.mark.parametrize("case", list(EXTRACT_CASES))
def test_extract_bad_input(world, case):
    build, code, needle = EXTRACT_CASES[case]
    args = build(world)
    before = snapshot(world.root)
    res = _invoke(*args)
    check_clean_failure(res, code, needle, world.root, before, world.out)


def test_failure_mid_run_with_force_leaves_the_old_output(world):
    """The run fails after writing began (a damaged HDF5 chunk): the existing OUTPUT, replaced
    only with --force and only on success, is byte-identical and no temporary file remains."""
    world.file("out.h5", b"the old results")
    args = world.args(data=_corrupt_h5(world), extra=["-b", "64", "--force"])
    before = snapshot(world.root)
    res = _invoke(*args)
    check_clean_failure(res, 3, "cannot read rows", world.root, before)
    assert world.out.read_bytes() == b"the old results"


# ---------------------------------------------------------------------------------------
# non-finite features: recorded by extract, refused (naming split and row) by measure
# ---------------------------------------------------------------------------------------


def test_nan_inputs_are_recorded_and_measure_names_split_and_row(world):
    x = X.copy()
    x[3, 0] = np.nan  # inside the first (discovery) batch, which still has finite rows
    x[25, :] = np.inf
    data = world.npz("nan.npz", x_train=x, y_train=Y, x_test=X, y_test=Y)
    res = _invoke(*world.args(data=data, extra=[]))
    assert res.exit_code == 0, res.stderr
    assert "2 rows of features contain NaN or Inf" in res.stderr
    with h5py.File(world.out, "r") as f:
        assert int(f.attrs["nonfinite_feature_rows"]) == 2
        assert float(f.attrs["max_reconstruction_error"]) < 1e-4  # finite rows still checked
        assert not np.isfinite(f["train/features"][3]).all()
    before = snapshot(world.root)
    res = _invoke("measure", world.out)
    check_clean_failure(res, 3, "split 'train', row 3", world.root, before)
    assert str(world.out) in res.stderr and "NaN or Inf" in res.stderr


# ---------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------


INSPECT_CASES = {
    "missing checkpoint": (lambda w: ["inspect", w.root / "missing.pt"], 3, "no such file"),
    "checkpoint is a directory": (lambda w: ["inspect", w.root], 3, "is a directory"),
    "junk bytes": (lambda w: ["inspect", w.file("junk.pt", b"\x00junk" * 50)], 3, "not a checkpoint"),
    "damaged pickle": (lambda w: ["inspect", w.file("p.pt", b"\x80\x02junk")], 3, "damaged"),
    "missing --arch file": (lambda w: ["inspect", w.ck, "--arch", f"{w.root / 'nope.py'}:Net"], 3, "no such file"),
    "broken --arch file": (lambda w: ["inspect", w.ck, "--arch", w.arch_file("bad.py", "def Net(:")], 3, "SyntaxError"),
    "--arch that does not fit": (lambda w: ["inspect", w.ck, "--arch", arch("Projection")], 3, "does not fit"),
    "pickled model without --trust-checkpoint": (lambda w: ["inspect", _pickled_model(w)], 4, "--trust-checkpoint"),
    "data that does not fit the model": (
        lambda w: ["inspect", w.ck, "--arch", arch("Net"), "--data", w.npz("r.npz", x=X[:, :5], y=Y)], 3, "fails on the first batch"
    ),
    "missing data": (lambda w: ["inspect", w.ck, "--arch", arch("Net"), "--data", w.root / "nope.npz"], 3, "no such file"),
    "malformed --input-shape": (lambda w: ["inspect", w.ck, "--arch", arch("Net"), "--input-shape", "a,b"], 2, "--input-shape"),
    "--input-shape that does not fit": (lambda w: ["inspect", w.ck, "--arch", arch("Net"), "--input-shape", "5"], 3, "the model fails on the first batch"),
}


@pytest.mark.parametrize("case", list(INSPECT_CASES))
def test_inspect_bad_input(world, case):
    build, code, needle = INSPECT_CASES[case]
    args = build(world)
    before = snapshot(world.root)
    check_clean_failure(_invoke(*args), code, needle, world.root, before)


def test_inspect_reports_a_failing_guessed_input_instead_of_failing(world):
    """Without --data/--input-shape the input is a guess: its failure is shown, not an error."""
    src = world.file(
        "odd.py",
        "import torch.nn as nn\n"
        "class Odd(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(8, 4)\n"
        "    def forward(self, x):\n"
        "        raise ValueError('needs a dict')\n",
    )
    ck = world.root / "odd.pt"
    torch.save({"fc." + k: v for k, v in torch.nn.Linear(8, 4).state_dict().items()}, ck)
    res = _invoke("inspect", ck, "--arch", f"{src}:Odd", "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["chosen"] is None and "ValueError: needs a dict" in rec["forward_error"]


# ---------------------------------------------------------------------------------------
# issue 15: what is allowed when asked, and names the file system barely holds
# ---------------------------------------------------------------------------------------


def test_allow_external_reads_linked_data_and_soft_links_always_work(world):
    linked = _h5_with_external_link(world)
    res = _invoke(*world.args(data=linked, extra=["--allow-external"]))
    assert res.exit_code == 0, res.stderr
    soft = world.root / "soft.h5"
    with h5py.File(soft, "w") as f:
        f["data/inputs"], f["data/targets"] = X, Y
        f["x"], f["y"] = h5py.SoftLink("/data/inputs"), h5py.SoftLink("/data/targets")
    res = _invoke(*world.args(data=soft, out=world.root / "soft_out.h5"))
    assert res.exit_code == 0, res.stderr


def test_an_output_name_the_temporary_name_would_not_fit(world):
    """A 250-byte name fits the file system but ".ncli-tmp-<pid>-<hex>-" + it does not: the
    temporary name is shortened, the output gets its full name."""
    out = world.root / ("o" * 247 + ".h5")
    before = snapshot(world.root)
    res = _invoke(*world.args(out=out))
    assert res.exit_code == 0, res.stderr
    assert out.exists() and not leftovers(world.root)
    assert set(snapshot(world.root)) == set(before) | {out.name}


def test_a_checkpoint_or_data_in_an_unreadable_folder(world, monkeypatch):
    import builtins
    import os

    locked = world.root / "locked"
    locked.mkdir()
    ck, data = locked / "net.pt", locked / "data.npz"
    ck.write_bytes(world.ck.read_bytes())
    data.write_bytes(world.data.read_bytes())
    real_stat, real_open = os.stat, builtins.open

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(locked) + os.sep):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", refuse(real_stat))
    monkeypatch.setattr(builtins, "open", refuse(real_open))
    for args, needle in (
        (world.args(ck=ck), f"{ck}: cannot read (Permission denied)"),
        (world.args(data=f"train={data}"), "Permission denied"),
        (["inspect", ck], f"{ck}: cannot read (Permission denied)"),
    ):
        res = _invoke(*args)
        assert res.exit_code == 3, (args, res.stderr)
        assert needle in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
        assert str(locked) in res.stderr


def test_inspect_shows_key_names_as_text(world):
    sd = model("Net").state_dict()
    sd["x\x1b]0;pwned\x07[/].weight"] = torch.zeros(3, 4)  # a 2-D '.weight': listed as a linear layer
    ck = world.root / "odd_keys.pt"
    torch.save(sd, ck)
    res = _invoke("inspect", ck)
    assert res.exit_code == 0, res.stderr
    assert "\x1b" not in res.stdout and "x\\x1b]0;pwned\\x07[/]" in res.stdout
