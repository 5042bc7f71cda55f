"""Checkpoint forms, detected by content (never by extension), and how each is loaded.

  state_dict     ``torch.save`` zip or legacy file, read with ``torch.load(weights_only=True)``
                 (numpy scalars/dtypes/arrays and ``argparse.Namespace`` are allowed as well;
                 they are plain data). The tensors may sit at the top level or in a nested dict
                 (``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``, ``module``;
                 EMA weights (``ema``, ``model_ema``, ``state_dict_ema``, ...) only with --ema).
                 Needs --arch.
  safetensors    read with ``safetensors.torch.load_file`` ([safetensors] extra). Needs --arch.
  torchscript    ``torch.jit.load``: TorchScript code is run by the TorchScript interpreter,
                 not by Python's unpickler, so no --trust-checkpoint is needed.
  torch.export   ``torch.export.load`` (a ``.pt2`` program). Its embedded pickles are read
                 with ``weights_only=True``; a program that needs more is refused unless
                 --trust-checkpoint is given.
  pickled module a whole ``nn.Module`` saved with ``torch.save(model)``: unpickling it runs code
                 named by the file, so it is loaded only with --trust-checkpoint; without it the
                 refusal lists the globals the file wants (found by a static scan, nothing run).

Key alignment (``align_state_dict``) is guided by the model's own keys: ``_orig_mod.``
(torch.compile) is removed anywhere in a key; a first component shared by all keys
(``module.`` from DataParallel/DDP, ``model.`` from Lightning, any wrapper) is stripped when
that makes more keys match; and when the keys under one of ``module.``/``model.``/``net.``/
``network.`` match the model exactly, the other keys (e.g. a Lightning module's loss buffers)
are dropped and counted. Loading is then strict.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickletools
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ncli.errors import EnvironmentProblem, InputError, RefusedError, UsageError
from ncli.features.schema import HDF5_SIGNATURE

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema", "ema_model", "ema_state", "model_ema_state_dict")
WRAPPER_PREFIXES = ("module.", "model.", "net.", "network.")
EPOCH_KEYS = ("epoch", "epochs", "current_epoch")
STEP_KEYS = ("step", "global_step", "iteration", "iter", "steps")

FORMS_THAT_WORK = (
    "a state_dict file (torch.save(model.state_dict())) or .safetensors with --arch; "
    "a TorchScript archive; a torch.export .pt2 program; a pickled module with --trust-checkpoint"
)


@dataclass
class Checkpoint:
    path: str
    form: str  # state_dict | safetensors | torchscript | torch.export | pickled module
    sha256: str
    state_dict: dict | None = None
    module: Any = None  # nn.Module, ScriptModule or ExportedProgram
    container_key: str | None = None  # where the weights were found, e.g. "state_dict"
    epoch: int | None = None
    step: int | None = None
    notes: list[str] = field(default_factory=list)
    top_keys: list[str] = field(default_factory=list)


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------


def detect_form(path: str | os.PathLike) -> str:
    """One of: torch-zip, torchscript, pt2, safetensors, legacy-pickle, hdf5, npz, npy, unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        tails = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in tails or any(t.startswith("code/__torch__") for t in tails):
            return "torchscript"
        if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
            return "pt2"
        if "data.pkl" in tails:
            return "torch-zip"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "unknown"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n < (100 << 20) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return "legacy-pickle"
    return "unknown"


# ---------------------------------------------------------------------------------------
# safe unpickling
# ---------------------------------------------------------------------------------------


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


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _torch_load_safe(path: str):
    import torch

    with _quiet(), torch.serialization.safe_globals(_extra_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _torch_load_trusted(path: str):
    import torch

    try:
        with _quiet():
            return torch.load(path, map_location="cpu", weights_only=False)  # only with --trust-checkpoint
    except ModuleNotFoundError as exc:
        raise InputError(
            f"{path}: the pickled model needs module {exc.name!r}, which cannot be imported here; "
            "make the code that defined the model importable (e.g. PYTHONPATH=its/folder)"
        ) from None
    except AttributeError as exc:
        raise InputError(
            f"{path}: the pickled model refers to a class or function that its module no longer defines ({exc})"
        ) from None
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle the checkpoint: {type(exc).__name__}: {exc}") from None


def _refuse_unsafe(path: str, names: list[str], what: str) -> RefusedError:
    names = sorted(names, key=lambda n: (n.startswith("torch."), n))  # the model's own classes first
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return RefusedError(
        f"{path}: {what}; unpickling it would import and run code named by the file ({shown or 'custom objects'}). "
        "Load it only if you trust its source: pass --trust-checkpoint "
        "(or save a state_dict instead: torch.save(model.state_dict(), ...), and use --arch)"
    )


# ---------------------------------------------------------------------------------------
# interpreting loaded objects
# ---------------------------------------------------------------------------------------


def _as_int(v) -> int | None:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or v.dtype.is_floating_point and not float(v).is_integer():
                return None
            return int(v.item())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        import numpy as np

        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def is_state_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _position(d: Mapping, keys) -> int | None:
    for k in keys:
        if k in d:
            v = _as_int(d[k])
            if v is not None:
                return v
    return None


def interpret(obj, path: str, ema: bool) -> tuple[dict | None, Any, str | None, int | None, int | None, list[str]]:
    """-> (state_dict, module, container_key, epoch, step, top-level keys)."""
    import torch.nn as nn

    if isinstance(obj, nn.Module):
        if ema:
            raise UsageError(f"{path}: --ema: the file holds a whole model, not a dict with EMA weights")
        return None, obj, None, None, None, []
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{path}: the checkpoint holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    top = [str(k) for k in obj.keys()]
    epoch = _position(obj, EPOCH_KEYS)
    step = _position(obj, STEP_KEYS)

    def descend(value, key, depth=0):
        if isinstance(value, nn.Module):
            return None, value, key
        if is_state_dict(value):
            return dict(value), None, key
        if isinstance(value, Mapping) and depth < 2:
            for k in STATE_DICT_KEYS:
                if k in value:
                    got = descend(value[k], f"{key}/{k}" if key else k, depth + 1)
                    if got is not None:
                        return got
        return None

    if ema:
        for k in EMA_KEYS:
            if k in obj:
                got = descend(obj[k], k)
                if got is not None:
                    return got[0], got[1], got[2], epoch, step, top
        raise InputError(
            f"{path}: --ema: no EMA weights found (looked for {', '.join(EMA_KEYS)}; the file has: {', '.join(top[:20])})"
        )
    got = descend(obj, None)
    if got is None:
        shown = ", ".join(top[:20]) + (" ..." if len(top) > 20 else "")
        raise InputError(
            f"{path}: no state_dict found (a dict of tensors, at the top or under "
            f"{', '.join(STATE_DICT_KEYS)}); the file has keys: {shown or 'none (an empty dict)'}"
        )
    return got[0], got[1], got[2], epoch, step, top


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, ema: bool = False) -> Checkpoint:
    p = Path(path)
    path = str(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint file")
    try:
        form = detect_form(path)
        digest = sha256_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None

    if form == "hdf5":
        raise InputError(f"{path}: is an HDF5 file (a feature file or data?), not a checkpoint; expected {FORMS_THAT_WORK}")
    if form in ("npz", "npy"):
        raise InputError(f"{path}: is a numpy array file, not a checkpoint (data goes to --data SPLIT=FILE)")
    if form == "unknown":
        raise InputError(f"{path}: not a checkpoint ncli recognises; expected {FORMS_THAT_WORK}")

    if form == "safetensors":
        return _load_safetensors(path, digest, ema)
    if form == "torchscript":
        return _load_torchscript(path, digest, ema)
    if form == "pt2":
        return _load_pt2(path, digest, trust, ema)

    # torch.save, zip or legacy
    import pickle

    try:
        obj = _torch_load_safe(path)
    except pickle.UnpicklingError:
        names = unsafe_globals(path)
        if not trust:
            what = "is a pickled model or holds custom Python objects"
            if any(n.startswith("torch.nn.modules.") for n in names):
                what = "is a whole pickled model (torch.save(model))"
            raise _refuse_unsafe(path, names, what) from None
        obj = _torch_load_trusted(path)
    except Exception as exc:  # any failure of the weights-only unpickler on damaged bytes
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot read the checkpoint, truncated or damaged? ({type(exc).__name__}: {detail})") from None
    sd, module, key, epoch, step, top = interpret(obj, path, ema)
    if module is not None:
        if not trust:  # cannot happen: modules never pass weights_only; kept as a guard
            raise _refuse_unsafe(path, [], "is a whole pickled model")
        return Checkpoint(path, "pickled module", digest, None, module.eval(), key, epoch, step, top_keys=top)
    return Checkpoint(path, "state_dict", digest, sd, None, key, epoch, step, top_keys=top)


def _load_safetensors(path: str, digest: str, ema: bool) -> Checkpoint:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        raise EnvironmentProblem(
            f"{path}: is a .safetensors file; reading it needs the safetensors package: pip install 'ncli[safetensors]'"
        ) from None
    if ema:
        raise UsageError(f"{path}: --ema does not apply to a .safetensors file (it holds one flat set of weights)")
    try:
        sd = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise InputError(f"{path}: cannot read the safetensors file ({type(exc).__name__}: {exc})") from None
    if not sd:
        raise InputError(f"{path}: the safetensors file holds no tensors")
    return Checkpoint(
        path, "safetensors", digest, dict(sd), None, None, _position(meta, EPOCH_KEYS), _position(meta, STEP_KEYS),
        top_keys=sorted(meta),
    )


def _load_torchscript(path: str, digest: str, ema: bool) -> Checkpoint:
    import torch

    if ema:
        raise UsageError(f"{path}: --ema does not apply to a TorchScript archive")
    try:
        with _quiet():
            sm = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise InputError(f"{path}: cannot load the TorchScript archive ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return Checkpoint(path, "torchscript", digest, None, sm.eval(), None)


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
def _force_weights_only():
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


class _UnsafeProgram(Exception):
    pass


@contextmanager
def _plain_shape_formulas():
    """While a .pt2 program loads untrusted: sympy.sympify only parses plain shape formulas."""
    import sympy

    orig = sympy.sympify
    refused: list[str] = []

    def guarded(a, *args, **kwargs):
        if isinstance(a, str):
            local = kwargs.get("locals") or (args[0] if args and isinstance(args[0], dict) else {})
            names = {k for k, v in local.items() if k.isidentifier() and not k.startswith("_")} if isinstance(local, dict) else set()
            if not _plain_shape_formula(a, names):
                refused.append(a)
                raise _UnsafeProgram(a)
        return orig(a, *args, **kwargs)

    sympy.sympify = guarded
    try:
        yield refused
    finally:
        sympy.sympify = orig


def _pt2_unsafe_globals(path: str) -> list[str]:
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


def _load_pt2(path: str, digest: str, trust: bool, ema: bool) -> Checkpoint:
    import pickle

    import torch

    if ema:
        raise UsageError(f"{path}: --ema does not apply to a torch.export program")
    refused: list[str] = []
    try:
        with _quiet():
            if trust:
                ep = torch.export.load(path)
            else:
                with _force_weights_only(), _plain_shape_formulas() as refused:
                    ep = torch.export.load(path)
                if refused:  # torch caught the refusal and went on: still refused
                    raise _UnsafeProgram(refused[0])
    except _UnsafeProgram:
        shown = refused[0] if len(refused[0]) <= 80 else refused[0][:77] + "..."
        raise RefusedError(
            f"{path}: is a torch.export program with a shape formula that is not plain sympy ({shown!r}); "
            "loading it would evaluate that text as Python. Load it only if you trust its source: pass --trust-checkpoint"
        ) from None
    except pickle.UnpicklingError:
        raise _refuse_unsafe(path, _pt2_unsafe_globals(path), "is a torch.export program with pickled Python objects") from None
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise _refuse_unsafe(path, _pt2_unsafe_globals(path), "is a torch.export program with pickled Python objects") from None
        raise InputError(f"{path}: cannot load the torch.export program ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return Checkpoint(path, "torch.export", digest, None, ep, None)


# ---------------------------------------------------------------------------------------
# weights -> an --arch model
# ---------------------------------------------------------------------------------------


def weights_of(ckpt: Checkpoint) -> dict:
    """The checkpoint's tensors as a state_dict, whatever the form."""
    if ckpt.state_dict is not None:
        return ckpt.state_dict
    m = ckpt.module
    if ckpt.form == "torch.export":
        sd = dict(m.state_dict)
        return sd
    return dict(m.state_dict())


def _overlap(keys, target: set) -> int:
    return sum(1 for k in keys if k in target)


def align_state_dict(sd: Mapping, model_keys) -> tuple[dict, list[str], list[str]]:
    """Rename checkpoint keys to the model's; -> (state_dict, steps taken, dropped keys)."""
    target = set(model_keys)
    cur = dict(sd)
    steps: list[str] = []
    dropped: list[str] = []
    if any("_orig_mod." in k for k in cur):
        cur = {k.replace("_orig_mod.", ""): v for k, v in cur.items()}
        steps.append("_orig_mod.")
    for _ in range(6):
        if set(cur) == target:
            break
        firsts = {k.split(".", 1)[0] if "." in k else None for k in cur}
        if len(firsts) == 1 and None not in firsts:
            first = firsts.pop()
            cand = {k.split(".", 1)[1]: v for k, v in cur.items()}
            if _overlap(cand, target) > _overlap(cur, target):
                cur = cand
                steps.append(first + ".")
                continue
        done = False
        for pre in WRAPPER_PREFIXES:
            sub = {k[len(pre):]: v for k, v in cur.items() if k.startswith(pre)}
            if sub and set(sub) == target and len(sub) < len(cur):
                dropped = [k for k in cur if not k.startswith(pre)]
                cur = sub
                steps.append(pre)
                done = True
                break
        if not done:
            break
    return cur, steps, dropped


def _short(keys, n=6) -> str:
    keys = list(keys)
    s = ", ".join(keys[:n])
    return s + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(model, sd: Mapping, *, path: str, arch: str) -> dict:
    """Strictly load ``sd`` into ``model``; -> info for provenance."""
    msd = model.state_dict()
    aligned, steps, dropped = align_state_dict(sd, msd.keys())
    missing = [k for k in msd if k not in aligned]
    unexpected = [k for k in aligned if k not in msd]
    shapes = [
        f"{k} {tuple(aligned[k].shape)} in the file vs {tuple(msd[k].shape)} in the model"
        for k in msd
        if k in aligned and tuple(aligned[k].shape) != tuple(msd[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected in the file: {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {_short(shapes, 3)}")
        strip = f" (after stripping {''.join(steps)})" if steps else ""
        raise InputError(f"{path}: --arch {arch} does not fit these weights{strip}: " + "; ".join(parts))
    try:
        model.load_state_dict(aligned, strict=True)
    except Exception as exc:
        raise InputError(f"{path}: --arch {arch}: loading the weights failed: {str(exc).splitlines()[0][:300]}") from None
    return {"stripped_prefixes": steps, "dropped_keys": dropped, "num_tensors": len(aligned)}
