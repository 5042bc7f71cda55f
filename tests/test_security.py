"""Issue 5, security: nothing a file names is run unless the user said so.

- A pickle whose unpickling would run code is refused without --trust-checkpoint (exit 4, the
  refusal names the globals it wants), and the code does not run: a marker file it would write
  stays absent. With the flag it does run (the control that shows the payload is real).
- ``torch.load`` is called with ``weights_only=True`` everywhere but the trusted path (checked
  in the source, and recorded during real extractions); torch.export's own plain pickles are
  refused too.
- HDF5 feature files and data files, and compare's JSON lines, are data only: pickled bytes
  in attributes, object arrays and code-looking strings are never unpickled or evaluated.
"""

from __future__ import annotations

import ast
import json
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from extract_util import arch, invoke, make_data, model, runner
from ncli.cli import app
from ncli.features import FeatureFile, write_features

NCLI = Path(__file__).resolve().parents[1] / "ncli"


class Payload:
    """Unpickling this runs ``exec`` of code that writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def _refused(r, marker: Path, out: Path | None = None):
    assert r.exit_code == 4, (r.exit_code, r.stderr)
    assert r.stderr.startswith("ncli: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "--trust-checkpoint" in r.stderr and "builtins.exec" in r.stderr  # what it would import
    assert not marker.exists(), "the pickle's code ran"
    if out is not None:
        assert not out.exists()
    assert not list(marker.parent.glob(".ncli-tmp-*"))


@pytest.mark.parametrize("form", ["zip", "legacy", "plain pickle", "inside a dict"])
def test_code_in_a_pickle_does_not_run_without_trust(tmp_path, data, form):
    marker = tmp_path / "marker"
    ck = tmp_path / "evil.pt"
    if form == "zip":
        torch.save(Payload(marker), ck)
    elif form == "legacy":
        torch.save(Payload(marker), ck, _use_new_zipfile_serialization=False)
    elif form == "plain pickle":
        ck.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    else:
        torch.save({"state_dict": model("Net").state_dict(), "config": Payload(marker)}, ck)
    out = tmp_path / "out.h5"
    _refused(invoke("extract", ck, "--data", data, "-o", out, "-q"), marker, out)
    _refused(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "-q"), marker, out)
    _refused(invoke("inspect", ck), marker)
    _refused(invoke("inspect", ck, "--arch", arch("Net")), marker)
    if form == "zip":  # the control: with the flag the payload really runs
        r = invoke("extract", ck, "--trust-checkpoint", "--data", data, "-o", out, "-q")
        assert marker.read_text() == "ran"
        assert r.exit_code == 3 and "NoneType" in r.stderr and not out.exists()


def _export_program(path: Path) -> None:
    m = model("Net")
    torch.export.save(torch.export.export(m, (torch.randn(5, 12),)), str(path))


def test_pt2_program_with_an_opaque_pickle_is_refused(tmp_path, data):
    """torch.export.load unpickles "opaque" constants with plain pickle.loads; without
    --trust-checkpoint ncli refuses them (it used to run them)."""
    marker = tmp_path / "marker"
    good = tmp_path / "prog.pt2"
    _export_program(good)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            blob = zin.read(item.filename)
            if item.filename.endswith("model_constants_config.json"):
                cfg = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
                blob = json.dumps({"config": {"evil": cfg}}).encode()
            zout.writestr(item, blob)
        zout.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(Payload(marker)))
    out = tmp_path / "out.h5"
    _refused(invoke("extract", evil, "--data", data, "-o", out, "-q"), marker, out)
    _refused(invoke("inspect", evil), marker)
    # the untouched program still loads
    r = invoke("extract", good, "--data", data, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr


def _rewrite_member(src: Path, dst: Path, suffix: str, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            blob = zin.read(item.filename)
            zout.writestr(item, edit(blob.decode()).encode() if item.filename.endswith(suffix) else blob)


def test_pt2_shape_formula_is_never_evaluated_as_python(tmp_path, data):
    """torch.export.load parses a dynamic program's shape formulas with sympy.sympify, which
    evaluates text as Python; without --trust-checkpoint only plain formulas are let through."""
    marker = tmp_path / "marker"
    good = tmp_path / "dyn.pt2"
    m = model("Net")
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(m, (torch.randn(5, 12),), dynamic_shapes=({0: batch},)), str(good))
    evil = tmp_path / "evil.pt2"
    payload = f"__import__('builtins').exec(\\\"open('{marker}', 'w').write('ran')\\\") or Symbol("

    def edit(text: str) -> str:
        assert '"expr_str": "Symbol(' in text  # torch writes srepr formulas
        return text.replace('"expr_str": "Symbol(', '"expr_str": "' + payload)

    _rewrite_member(good, evil, "models/model.json", edit)
    out = tmp_path / "out.h5"
    for args in (["extract", evil, "--data", data, "-o", out, "-q"], ["inspect", evil]):
        r = invoke(*args)
        assert r.exit_code == 4, (r.exit_code, r.stderr)
        assert "shape formula" in r.stderr and "--trust-checkpoint" in r.stderr and r.stderr.count("\n") == 1
        assert not marker.exists() and not out.exists()
    r = invoke("extract", good, "--data", data, "-o", out, "-q")  # plain formulas load as before
    assert r.exit_code == 0, r.stderr
    # the control: trusted, the formula is evaluated (and the payload runs)
    invoke("inspect", evil, "--trust-checkpoint")
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    "formula, plain",
    [
        ("Symbol('s77', integer=True, positive=True)", True),
        ("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))", True),
        ("FloorDiv(Symbol('s0', integer=True), Integer(2))", True),
        ("Float('0.5', precision=53)", True),
        ("__import__('os')", False),
        ("Symbol('s0').__class__", False),
        ("Symbol.__init__.__globals__", False),
        ("lambdify(x, 1)", False),
        ("Integer(1)[0]", False),
        ("Symbol('a'); exec('1')", False),
        ("Symbol(\"s0\")", False),
    ],
)
def test_plain_shape_formula(formula, plain):
    from ncli.extract.forms.sandbox import _plain_shape_formula

    assert _plain_shape_formula(formula, {"FloorDiv"}) is plain


# ---------------------------------------------------------------------------------------
# torch.load: weights_only=True everywhere but the trusted path
# ---------------------------------------------------------------------------------------


def _calls(tree: ast.AST):
    """(call node, name of the enclosing function) for every call in a module."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                out.append((child, func))
            visit(child, f)

    visit(tree, None)
    return out


def _dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return _dotted(node.value) + "." + node.attr
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def test_source_torch_load_is_weights_only_except_the_trusted_path():
    seen = []
    for path in sorted(NCLI.rglob("*.py")):
        for call, func in _calls(ast.parse(path.read_text(), str(path))):
            name = _dotted(call.func)
            where = f"{path.relative_to(NCLI.parent)}:{call.lineno} in {func}()"
            kw = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                seen.append(where)
                wo = kw.get("weights_only")
                if func == "_torch_load_trusted":  # only reached with --trust-checkpoint
                    continue
                assert isinstance(wo, ast.Constant) and wo.value is True, f"{where}: torch.load without weights_only=True"
            assert name not in ("pickle.load", "pickle.loads", "pickle.Unpickler", "eval", "exec", "marshal.loads"), where
            if name in ("np.load", "numpy.load"):
                ap = kw.get("allow_pickle")
                assert isinstance(ap, ast.Constant) and ap.value is False, f"{where}: np.load may unpickle"
    assert len(seen) == 3, seen  # the safe loader, the one with placeholders (issue 12) and the trusted one


def test_trusted_load_is_reached_only_with_the_flag(tmp_path, data, monkeypatch):
    """During real extractions of a state_dict and of a .pt2 program every torch.load call,
    torch's own included, gets weights_only=True."""
    calls = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    ck = tmp_path / "net.pt"
    torch.save({"epoch": 3, "state_dict": model("Net").state_dict()}, ck)
    assert invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "a.h5", "-q").exit_code == 0
    prog = tmp_path / "prog.pt2"
    _export_program(prog)
    assert invoke("extract", prog, "--data", data, "-o", tmp_path / "b.h5", "-q").exit_code == 0
    assert invoke("inspect", prog).exit_code == 0
    assert calls and all(wo is True for wo in calls), calls


# ---------------------------------------------------------------------------------------
# HDF5 and JSON inputs are data only
# ---------------------------------------------------------------------------------------


def _feature_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    H = np.eye(3, 4)[y] * 3 + rng.normal(size=(30, 4))
    return write_features(path, {"train": {"features": H, "labels": y}}, num_classes=3, weight=rng.normal(size=(3, 4)))


def test_hdf5_attributes_are_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    blob = pickle.dumps(Payload(marker))
    path = _feature_file(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        f.attrs["opaque_pickle"] = np.void(blob)
        f.attrs["pickle_bytes"] = np.frombuffer(blob, dtype=np.uint8)
        f.attrs["empty"] = h5py.Empty("f8")
        f.attrs["ref"] = f["train/features"].ref
        f.attrs.create("ragged", np.array([np.arange(2), np.arange(3)], dtype=object), dtype=h5py.vlen_dtype(np.int64))
        f.attrs["note"] = "__import__('os').system('touch " + str(marker) + "')"
    with FeatureFile(path) as ff:
        attrs = ff.attrs
    assert attrs["opaque_pickle"] == blob  # raw bytes, as stored
    assert attrs["pickle_bytes"] == list(blob)
    assert "empty" not in attrs and "ref" not in attrs
    assert attrs["note"].startswith("__import__")
    for args in (["measure", path, "--json"], ["compare", path, "--json"]):
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "attr, message",
    [("ncli_format", "ncli_format is"), ("ncli_format_version", "ncli_format_version"), ("num_classes", "num_classes")],
)
def test_pickled_bytes_in_a_known_attribute_are_an_input_error(tmp_path, attr, message):
    marker = tmp_path / "marker"
    path = _feature_file(tmp_path / "f.h5")
    with h5py.File(path, "a") as f:
        f.attrs[attr] = np.void(pickle.dumps(Payload(marker)))
    r = invoke("measure", path)
    assert r.exit_code == 3 and r.stderr.startswith("ncli: error: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not marker.exists()


def test_object_arrays_in_data_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    x = np.empty(4, dtype=object)
    x[:] = [Payload(marker)] * 4
    data = tmp_path / "obj.npz"
    np.savez(data, x=x, y=np.arange(4))
    r = invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "o.h5", "-q")
    assert r.exit_code == 3 and "cannot read" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "o.h5").exists()
    # opaque pickled bytes as HDF5 inputs: not numbers
    h5 = tmp_path / "obj.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.array([np.void(pickle.dumps(Payload(marker)))] * 4)
        f["y"] = np.arange(4)
    r = invoke("extract", ck, "--arch", arch("Net"), "--data", h5, "-o", tmp_path / "o.h5", "-q")
    assert r.exit_code == 3 and "expected numbers" in r.stderr, r.stderr
    assert not marker.exists()


def test_compare_json_is_never_evaluated(tmp_path):
    marker = tmp_path / "marker"
    path = _feature_file(tmp_path / "f.h5")
    rec = json.loads(invoke("measure", path, "--json").stdout)
    code = f"__import__('os').system('touch {marker}')"
    rec["file"] = code
    rec["layer"] = code
    rec["metrics"][code] = 1.0
    rec["splits"][code] = {"accuracy": 0.5}
    text = json.dumps(rec) + "\n"
    for fmt in ([], ["--json"], ["--csv"], ["--by", "layer"]):
        r = runner.invoke(app, ["compare", "-", *fmt], input=text)
        assert r.exit_code == 0, (fmt, r.stderr)
    out = json.loads(runner.invoke(app, ["compare", "-", "--json"], input=text).stdout)
    assert out["runs"][0]["file"] == code  # a string, as given
    # a record asking for a Python object is rejected as a wrong schema, not built
    bad = dict(rec, epoch={"__class__": "os.system"})
    r = runner.invoke(app, ["compare", "-"], input=json.dumps(bad) + "\n")
    assert r.exit_code == 3 and "'epoch' must be an integer" in r.stderr
    assert not marker.exists()
