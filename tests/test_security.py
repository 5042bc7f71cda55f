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


# ---------------------------------------------------------------------------------------
# TorchScript: the archive's code is audited before torch.jit.load runs any of it
# ---------------------------------------------------------------------------------------


class SavesInForward(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.body = torch.nn.Linear(12, 8)
        self.fc = torch.nn.Linear(8, 4)
        self.marker = marker

    def forward(self, x):
        torch.save(x, self.marker)  # overwrites any file the author names
        return self.fc(torch.relu(self.body(x)))


class SavesInSetstate(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.body = torch.nn.Linear(12, 8)
        self.fc = torch.nn.Linear(8, 4)
        self.marker = marker

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        torch.save(torch.zeros(1), state[0])  # runs inside torch.jit.load: `ncli inspect` is enough
        self.marker = state[0]
        self.training = state[1]


@pytest.mark.parametrize("where", ["forward", "__setstate__"])
def test_torchscript_that_writes_a_file_is_refused_before_it_runs(tmp_path, data, where):
    marker = tmp_path / "marker"
    module = SavesInForward(str(marker)) if where == "forward" else SavesInSetstate(str(marker))
    ck = tmp_path / "scripted.pt"
    torch.jit.script(module).save(str(ck))
    marker.unlink(missing_ok=True)  # scripting ran nothing, saving ran __getstate__ only
    out = tmp_path / "out.h5"
    for args in (["extract", ck, "--data", data, "-o", out, "-q"], ["inspect", ck], ["inspect", ck, "--data", data]):
        r = invoke(*args)
        assert r.exit_code == 4, (args, r.exit_code, r.stderr)
        assert r.stderr.startswith("ncli: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "torch.save (aten::save), which writes a file" in r.stderr and "code/__torch__/" in r.stderr and ", line " in r.stderr
        assert "--trust-checkpoint" in r.stderr
        assert not marker.exists() and not out.exists() and not list(tmp_path.glob(".ncli-tmp-*"))
    # the control: trusted, the archive really writes the file
    args = ["inspect", ck, "--trust-checkpoint"] if where == "__setstate__" else ["extract", ck, "--trust-checkpoint", "--data", data, "-o", out, "-q"]
    invoke(*args)
    assert marker.exists()


def _script_variant(tmp_path: Path, name: str, edit) -> Path:
    """The scripted Net with its top-level source edited by ``edit`` (as a hostile author would)."""
    good = tmp_path / "plain.pt"
    if not good.exists():
        torch.jit.script(model("Net")).save(str(good))
    out = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            blob = zin.read(item.filename)
            if item.filename.endswith("code/__torch__/extract_models.py"):
                text = blob.decode()
                edited = edit(text)
                assert edited != text
                blob = edited.encode()
            zout.writestr(item, blob)
    return out


def _before_return(line: str):
    return lambda text: text.replace("    return ", line.rstrip("\n") + "\n    return ", 1)


HOSTILE_SOURCES = {
    # name: (edit of the source, words of the finding, does torch run it?)
    "ops.aten.save": (lambda m: _before_return(f'    ops.aten.save(x, "{m}")'), "torch.save (aten::save)", True),
    "torch.autograd.save": (lambda m: _before_return(f'    torch.autograd.save(x, "{m}")'), "torch.save (aten::save)", True),
    "ops.prim.autograd.save": (lambda m: _before_return(f'    ops.prim.autograd.save(x, "{m}")'), "torch.save (aten::save)", True),
    "torch.from_file": (lambda m: _before_return('    _r = torch.from_file("/etc/hostname", False, 1)'), "torch.from_file", True),
    "a method call": (lambda m: _before_return(f'    _r = x.save("{m}")'), "calls .save()", False),
    "getattr": (lambda m: _before_return('    _r = getattr(x, "save")'), "getattr()", False),
    "print": (lambda m: _before_return('    print("\\x1b]0;pwned\\x07")'), "calls print", True),
    "prim::Print": (lambda m: _before_return('    ops.prim.Print("hi")'), "prim::Print", True),
    "an unknown name": (lambda m: _before_return("    _r = open"), "'open'", False),
    "a line continuation": (lambda m: _before_return('    _r = "a" \\\n      + "b"'), "line continuation", False),
    "a raw string": (lambda m: _before_return('    _r = r"a\\"'), "does not classify", False),
    "a tab": (lambda m: _before_return('    _r =\t1'), "control character", False),
    "a lambda": (lambda m: _before_return("    _r = lambda: 1"), "Lambda", False),
    "a non-ASCII name": (lambda m: _before_return("    _é = 1"), "does not classify", False),
    "an import": (lambda m: lambda text: "import os\n" + text, "Import", False),
    "a custom C++ class": (lambda m: _before_return("    _r = __torch__.torch.classes.foo.Bar()"), "custom C++ class", False),
}


@pytest.mark.parametrize("case", list(HOSTILE_SOURCES))
def test_torchscript_sources_that_are_not_proven_harmless_are_refused(tmp_path, case):
    from ncli.extract.forms.script_audit import audit

    marker = tmp_path / "marker"
    edit, words, torch_runs_it = HOSTILE_SOURCES[case]
    archive = _script_variant(tmp_path, "variant", edit(marker))
    finding = audit(str(archive))
    assert finding is not None and words in str(finding), finding
    r = invoke("inspect", archive, "--input-shape", "12")
    assert r.exit_code == 4 and "--trust-checkpoint" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not marker.exists()
    if torch_runs_it and "save" in case:  # the control: torch accepts this source and it writes the file
        torch.jit.load(str(archive))(torch.zeros(2, 12))
        assert marker.exists()


class Varied(torch.nn.Module):
    """Much of torch.nn, scripted: recurrent and attention layers, interpolation, dicts, asserts."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.lstm = torch.nn.LSTM(8, 8, batch_first=True)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)
        self.conv = torch.nn.Conv1d(8, 8, 3, padding="same")
        self.norm = torch.nn.GroupNorm(2, 8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.enc(h + a)
        c = torch.nn.functional.interpolate(self.norm(self.conv(h.transpose(1, 2))), scale_factor=2.0, mode="linear")
        parts: dict[str, torch.Tensor] = {"mean": c.mean(-1)}
        assert parts["mean"].dim() == 2, "expected (N, C)"
        return self.fc(torch.nn.functional.gelu(parts["mean"], approximate="tanh"))


def test_ordinary_torchscript_archives_pass_the_audit(tmp_path):
    from ncli.extract.forms.script_audit import audit

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "cnn_epoch0100_scripted.pt"
    assert audit(str(fixture)) is None
    varied = tmp_path / "varied.pt"
    torch.jit.script(Varied().eval()).save(str(varied))
    assert audit(str(varied)) is None
    r = invoke("inspect", varied, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["form"] == "torchscript"


@pytest.mark.parametrize(
    "operator, safe",
    [("aten::linear", True), ("aten::conv2d", True), ("aten::gelu", True), ("aten::__getitem__", True),
     ("prim::RaiseException", True), ("aten::_upsample_bilinear2d_aa", True),
     ("aten::save", False), ("aten::from_file", False), ("aten::_print", False), ("prim::Print", False),
     ("aten::_unsafe_index_put", False), ("aten::unsafe_split", False), ("aten::_index_put_impl_", False),
     ("aten::set_", False), ("prim::rpc_async", False), ("prim::PythonOp", False), ("c10d::barrier", False),
     ("aten::no_such_operator", False)],
)
def test_operator_allowlist(operator, safe):
    from ncli.extract.forms.script_audit import safe_operator

    assert safe_operator(operator) is safe


# ---------------------------------------------------------------------------------------
# .pt2 with native code: refused from its member names before torch reads the archive
# ---------------------------------------------------------------------------------------

LIBRARY_SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void payload(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


def _shared_library(tmp_path: Path, marker: Path) -> Path:
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build the library")
    src = tmp_path / "payload.c"
    src.write_text(LIBRARY_SOURCE)
    lib = tmp_path / "payload.so"
    done = subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib), str(src)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build a shared library here: {done.stderr.decode()[:200]}")
    return lib


def _aoti_leftovers() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("aotinductor_*")}


def test_pt2_with_an_aotinductor_library_is_refused_before_torch_reads_it(tmp_path, data):
    marker = tmp_path / "marker"
    lib = _shared_library(tmp_path, marker)
    good = tmp_path / "prog.pt2"
    _export_program(good)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.write(lib, f"{root}/data/aotinductor/model/model.so")
        for name in ("wrapper_metadata.json", "model_metadata.json"):  # what torch's loader needs to dlopen
            zout.writestr(f"{root}/data/aotinductor/model/{name}", json.dumps({"AOTI_DEVICE_KEY": "cpu"}))
    before = _aoti_leftovers()
    out = tmp_path / "out.h5"
    for args in (["extract", evil, "--data", data, "-o", out, "-q"], ["inspect", evil]):
        r = invoke(*args)
        assert r.exit_code == 4, (r.exit_code, r.stderr)
        assert r.stderr.startswith("ncli: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "native code" in r.stderr and "data/aotinductor/model/model.so" in r.stderr and "--trust-checkpoint" in r.stderr
        assert not marker.exists() and not out.exists()
    assert _aoti_leftovers() == before
    # the control: trusted, torch dlopens the library (its constructor runs); ncli removes torch's scratch folder
    invoke("inspect", evil, "--trust-checkpoint")
    assert marker.read_text() == "ran"
    assert _aoti_leftovers() == before
