"""``torch.save`` files (zip or legacy): a state_dict, or a whole pickled model.

  state_dict     read with ``torch.load(weights_only=True)`` (numpy scalars/dtypes/arrays and
                 ``argparse.Namespace`` are allowed as well; they are plain data). The tensors
                 may sit at the top level or in a nested dict (``state_dict``,
                 ``model_state_dict``, ``model``, ``net``, ``network``, ``module``; EMA weights
                 (``ema``, ``model_ema``, ``state_dict_ema``, ...) only with --ema). Needs --arch.
  pickled module a whole ``nn.Module`` saved with ``torch.save(model)``: unpickling it runs code
                 named by the file, so it is loaded only with --trust-checkpoint; without it the
                 refusal lists the globals the file wants (found by a static scan, nothing run).

Both are one container: which of the two a file holds shows only when it is unpickled, so the
state_dict form detects and loads both, and hands a model to the pickled-module form.

Training checkpoints: a file whose weights are tensors but whose other entries hold custom
objects (Lightning + Hydra's OmegaConf hyper-parameters) is read with placeholders for those
objects (``placeholders``), without --trust-checkpoint. Lightning's ``EMAWeightAveraging``
stores the averaged weights in ``state_dict`` and the raw ones in ``current_model_state``:
--ema reads the averaged ones, as in every other layout, and the default the raw ones.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ncli.errors import InputError, NcliError, UsageError
from ncli.extract.forms.base import EPOCH_KEYS, STEP_KEYS, Checkpoint, Form, Probe, position, quiet
from ncli.extract.forms.placeholders import load_with_placeholders, runs_code
from ncli.extract.forms.sandbox import load_weights_only, refuse_unsafe, unsafe_globals

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema", "ema_model", "ema_state", "model_ema_state_dict")
# Lightning's EMAWeightAveraging: averaged weights in "state_dict", the raw ones here
LIGHTNING_RAW_KEY = "current_model_state"
# globals that are plain data: not worth naming in a refusal (they are not why a file is refused)
PLAIN_GLOBALS = frozenset(
    "builtins.dict builtins.list builtins.tuple builtins.set builtins.frozenset builtins.int builtins.float "
    "builtins.str builtins.bool builtins.bytes builtins.complex builtins.slice builtins.object typing.Any "
    "collections.OrderedDict collections.defaultdict".split()
)


def is_state_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def ema_details(obj) -> dict:
    """Where a training checkpoint keeps EMA weights (``ncli inspect`` shows it, the feature
    file records it): {} when it has none."""
    if not isinstance(obj, Mapping):
        return {}
    if LIGHTNING_RAW_KEY in obj and "state_dict" in obj:
        return {"ema_weights": "Lightning EMAWeightAveraging: averaged in state_dict (--ema), raw in current_model_state"}
    keys = [k for k in EMA_KEYS if k in obj]
    return {"ema_weights": f"{', '.join(keys)} (--ema)"} if keys else {}


def interpret(obj, path: str, ema: bool) -> tuple[dict | None, Any, str | None, int | None, int | None]:
    """What ``torch.load`` returned -> (state_dict, module, container_key, epoch, step)."""
    import torch.nn as nn

    if isinstance(obj, nn.Module):
        if ema:
            raise UsageError(f"{path}: --ema: the file holds a whole model, not a dict with EMA weights")
        return None, obj, None, None, None
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{path}: the checkpoint holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    top = [str(k) for k in obj.keys()]
    epoch = position(obj, EPOCH_KEYS, path)
    step = position(obj, STEP_KEYS, path)

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

    if LIGHTNING_RAW_KEY in obj and "state_dict" in obj:  # EMAWeightAveraging
        key = "state_dict" if ema else LIGHTNING_RAW_KEY
        got = descend(obj[key], key)
        if got is not None:
            return got[0], got[1], got[2], epoch, step
    if ema:
        for k in EMA_KEYS:
            if k in obj:
                got = descend(obj[k], k)
                if got is not None:
                    return got[0], got[1], got[2], epoch, step
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
    return got[0], got[1], got[2], epoch, step


def _torch_load_trusted(path: str):
    import torch

    try:
        with quiet():
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


def _weights_beside_objects(path: str, names: list[str], ema: bool):
    """(checkpoint object, details) when the file's weights are tensors and only its other
    entries hold the objects ``names`` (read as placeholders); None otherwise."""
    import pickle

    if not names or any(runs_code(n) for n in names):
        return None
    try:
        obj = load_with_placeholders(path, names)
        interpret(obj, path, ema)  # a state_dict of tensors must be there
    except (pickle.UnpicklingError, NcliError, RuntimeError, ValueError, TypeError, AttributeError):
        return None
    shown = [n for n in names if n not in PLAIN_GLOBALS]
    return obj, {"objects_not_loaded": ", ".join(shown[:8]) + (" ..." if len(shown) > 8 else "")}


class StateDict(Form):
    name = "state_dict"
    weights_without_model = True

    def detect(self, probe: Probe) -> bool:
        if probe.is_zip:
            return "data.pkl" in probe.zip_tails
        return probe.head[:1] == b"\x80"  # a legacy (pre-zip) torch.save pickle

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        import pickle

        details: dict = {}
        try:
            obj = load_weights_only(path)
        except pickle.UnpicklingError as exc:
            names = unsafe_globals(path)
            found = _weights_beside_objects(path, names, ema)
            if found is not None:  # tensors beside custom objects: nothing of the file ran
                obj, details = found
            elif not trust:
                what = "is a pickled model or holds custom Python objects"
                if any(n.startswith("torch.nn.modules.") for n in names):
                    what = "is a whole pickled model (torch.save(model))"
                elif not names:  # no import named: say what torch's weights-only reader refused
                    reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
                    what = f"holds data torch's weights-only reader refuses ({reason.group(1).strip()[:80] if reason else 'unknown'})"
                raise refuse_unsafe(path, [n for n in names if n not in PLAIN_GLOBALS], what) from None
            else:
                obj = _torch_load_trusted(path)
        except Exception as exc:  # any failure of the weights-only unpickler on damaged bytes
            detail = (str(exc).splitlines() or [""])[0][:200]
            raise InputError(f"{path}: cannot read the checkpoint, truncated or damaged? ({type(exc).__name__}: {detail})") from None
        state_dict, module, key, epoch, step = interpret(obj, path, ema)
        details.update(ema_details(obj))
        if module is not None:
            if not trust:  # cannot happen: modules never pass weights_only; kept as a guard
                raise refuse_unsafe(path, [], "is a whole pickled model")
            return Checkpoint(path, PICKLED_MODULE, digest, None, module.eval(), key, epoch, step)
        return Checkpoint(path, self, digest, state_dict, None, key, epoch, step, details)


class PickledModule(Form):
    name = "pickled module"

    def detect(self, probe: Probe) -> bool:
        return False  # a torch.save file: StateDict loads it and hands the model over

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        return STATE_DICT.load(path, digest, trust=trust, ema=ema)

    def make_extractor(self, ckpt: Checkpoint, options):
        from ncli.extract.extractors.eager import EagerExtractor

        return EagerExtractor(ckpt.module, options.classifier, options.layers, options.pool, options.amp)


STATE_DICT = StateDict()
PICKLED_MODULE = PickledModule()
