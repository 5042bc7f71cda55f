"""Loading files that may hold code without running it.

  static pickle scans   the globals a pickle names, read with pickletools (nothing runs):
                        ``unsafe_globals`` for torch.save files, ``pt2_unsafe_globals`` for the
                        pickles embedded in a .pt2 archive; they name what a refusal lists
  load_weights_only     ``torch.load(weights_only=True)`` plus a few plain-data globals
  force_weights_only    while torch.export.load runs: every torch.load inside it is weights-only,
                        and the archive reader's plain ``pickle.loads`` is refused (``_NoPickle``)
  plain_shape_formulas  while a .pt2 program loads untrusted: sympy only parses plain shape
                        formulas (torch.export.load evaluates them as Python)
  native_code_members   members of an archive that torch would load as native code (AOTInductor
                        libraries under data/aotinductor/, any .so/.dll/.dylib/.pyd)
  private_temp_folder   while a trusted .pt2 loads: torch's scratch files go to a folder removed after
  refuse_unsafe         the one refusal message, pointing at --trust-checkpoint
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager

from ncli.errors import RefusedError
from ncli.extract.forms.base import quiet


def _extra_safe_globals() -> list:
    """Plain-data globals that checkpoints often contain besides tensors."""
    import argparse

    import numpy as np

    out: list = [argparse.Namespace, np.dtype, np.ndarray]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    out += [scalar, _reconstruct]
    for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "float32", "float64", "complex64", "complex128", "U", "S", "O"):
        out.append(type(np.dtype(t)))
    return out


def _global_name(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _scan_pickle_globals(path: str) -> list[str]:
    """Static scan (no code runs) of the GLOBALs of the pickles at the start of a legacy file."""
    with open(path, "rb") as f:
        return _scan_pickle_stream(f, 4)  # magic, protocol, sys_info, the object


def _scan_pickle_stream(f, count: int) -> list[str]:
    """The GLOBALs named by the next ``count`` pickles in ``f`` (pickletools: nothing runs)."""
    found: list[str] = []
    for _ in range(count):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if op.name == "STOP":
                    break
        except Exception:
            break
    # protocol-2 pickles name builtins by their Python 2 module (what unpickling imports)
    return [("builtins." + n[len("__builtin__."):]) if n.startswith("__builtin__.") else n for n in found]


def unsafe_globals(path: str) -> list[str]:
    """Globals the file wants that ``weights_only=True`` (plus our plain-data list) refuses."""
    import torch

    extra = {_global_name(g) for g in _extra_safe_globals()}
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        safe_prefixes = ("torch._utils._rebuild", "collections.OrderedDict", "torch.Size", "torch._tensor")
        names = [
            n for n in _scan_pickle_globals(path)
            if not n.startswith(safe_prefixes) and not (n.startswith("torch.") and n.endswith("Storage"))
        ]
    out: list[str] = []
    for n in names:
        if n not in extra and n not in out:
            out.append(n)
    return out


def pt2_unsafe_globals(path: str) -> list[str]:
    """Unsafe globals of the torch.save blobs embedded in a .pt2 archive (static scan)."""
    import torch

    extra = {_global_name(g) for g in _extra_safe_globals()}
    names: list[str] = []
    try:
        with zipfile.ZipFile(path) as z:
            for n in z.namelist():
                with z.open(n) as f:
                    head = f.read(4)
                if head[:1] == b"\x80" and n.rsplit("/", 1)[-1].startswith("opaque_obj_"):
                    with z.open(n) as f:  # a plain pickle the reader would load: scan it
                        for g in _scan_pickle_stream(f, 1):
                            if g not in extra and g not in names:
                                names.append(g)
                    continue
                if head != b"PK\x03\x04":
                    continue
                data = z.read(n)
                try:
                    for g in torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)):
                        if g not in extra and g not in names:
                            names.append(g)
                except Exception:
                    continue
    except (OSError, zipfile.BadZipFile):
        pass
    return names


def load_weights_only(path: str):
    """``torch.load`` that unpickles tensors and plain data only (UnpicklingError otherwise)."""
    import torch

    with quiet(), torch.serialization.safe_globals(_extra_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def refuse_unsafe(path: str, names: list[str], what: str) -> RefusedError:
    names = sorted(names, key=lambda n: (n.startswith("torch."), n))  # the model's own classes first
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return RefusedError(
        f"{path}: {what}; unpickling it would import and run code named by the file ({shown or 'custom objects'}). "
        "Load it only if you trust its source: pass --trust-checkpoint "
        "(or save a state_dict instead: torch.save(model.state_dict(), ...), and use --arch)"
    )


class _NoPickle:
    """Stands in for the ``pickle`` module inside torch.export's archive reader, which
    unpickles "opaque" constants with plain ``pickle.loads``: they are refused, never run."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _refuse(self, *args, **kwargs):
        raise self._real.UnpicklingError("the program holds a pickled Python object (an opaque constant)")

    loads = load = _refuse


@contextmanager
def force_weights_only():
    """Make every torch.load inside torch.export.load use weights_only=True, and refuse the
    plain pickles the archive reader would otherwise load."""
    import pickle

    import torch

    orig = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_extra_safe_globals()):
            return orig(*args, **kwargs)

    try:
        from torch.export.pt2_archive import _package as pt2_package
    except ImportError:  # older torch: no archive reader of its own
        pt2_package = None
    orig_pickle = getattr(pt2_package, "pickle", None)
    torch.load = safe_load
    if orig_pickle is not None:
        pt2_package.pickle = _NoPickle(pickle)
    try:
        yield
    finally:
        torch.load = orig
        if orig_pickle is not None:
            pt2_package.pickle = orig_pickle


# Names a shape formula of a .pt2 program may use: what sympy's srepr writes (torch stores the
# formulas that way) and the keyword arguments of its constructors. torch.export.load parses the
# formulas with sympy.sympify, which evaluates a string as Python: a formula with any other name,
# attribute access or subscript could run arbitrary code, so it is refused without trust.
_SHAPE_NAMES = frozenset(
    """Symbol Dummy Integer Rational Float Add Mul Pow Mod Max Min Abs floor ceiling sqrt
    Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan LessThan StrictGreaterThan GreaterThan
    And Or Not Xor Piecewise ExprCondPair Tuple true false BooleanTrue BooleanFalse
    oo zoo nan Infinity NegativeInfinity NaN ComplexInfinity One Zero NegativeOne Half
    True False None positive negative nonpositive nonnegative nonzero zero integer real rational
    finite infinite extended_real commutative even odd prime composite precision evaluate""".split()
)
_SHAPE_OPS = frozenset({"(", ")", ",", "=", "+", "-", "*", "/", "**", "%"})
_SHAPE_STRING = re.compile(r"^'[A-Za-z0-9_.+\-]*'$")


def _plain_shape_formula(text: str, names) -> bool:
    import tokenize

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
                continue
            if tok.type == tokenize.NAME and (tok.string in _SHAPE_NAMES or tok.string in names):
                continue
            if tok.type == tokenize.STRING and _SHAPE_STRING.match(tok.string):
                continue
            if tok.type == tokenize.OP and tok.string in _SHAPE_OPS:
                continue
            return False
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    return True


class UnsafeProgram(Exception):
    """A .pt2 shape formula that is not plain sympy (raised inside torch.export.load)."""


@contextmanager
def plain_shape_formulas():
    """While a .pt2 program loads untrusted: sympy.sympify only parses plain shape formulas.
    Yields the list of refused formulas (torch may catch the refusal and go on)."""
    import sympy

    orig = sympy.sympify
    refused: list[str] = []

    def guarded(a, *args, **kwargs):
        if isinstance(a, str):
            local = kwargs.get("locals") or (args[0] if args and isinstance(args[0], dict) else {})
            names = {k for k, v in local.items() if k.isidentifier() and not k.startswith("_")} if isinstance(local, dict) else set()
            if not _plain_shape_formula(a, names):
                refused.append(a)
                raise UnsafeProgram(a)
        return orig(a, *args, **kwargs)

    sympy.sympify = guarded
    try:
        yield refused
    finally:
        sympy.sympify = orig


NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")


def native_code_members(path: str) -> list[str]:
    """Members of the zip archive at ``path`` that would be loaded as native code:
    torch.export.load hands everything under ``data/aotinductor/`` to AOTInductor's loader,
    which unpacks it and dlopens its libraries (running their constructors). Names only, read
    before torch opens the archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return []
    found = []
    for name in names:
        parts = name.lower().split("/")
        leaf = parts[-1]
        if "aotinductor" in parts or leaf.endswith(NATIVE_SUFFIXES) or ".so." in leaf:
            found.append(name)
    return found


@contextmanager
def private_temp_folder():
    """While a trusted program loads: TMPDIR is a fresh folder of ncli's, removed afterwards
    (AOTInductor unpacks into TMPDIR and leaves ``aotinductor_*`` folders behind)."""
    folder = tempfile.mkdtemp(prefix="ncli-pt2-")
    before_env, before_module = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield folder
    finally:
        if before_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before_env
        tempfile.tempdir = before_module
        shutil.rmtree(folder, ignore_errors=True)
