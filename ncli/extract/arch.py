"""``--arch SPEC``: build the Python model that a state_dict is loaded into.

SPEC forms:
  path/to/file.py:Name     a class or factory defined in a Python file (imported by path)
  pkg.module:Name          a class or factory in an importable module (the current folder is
                           tried too, as ``python -m`` would)
  torchvision:NAME         ``torchvision.models.get_model(NAME, weights=None)``   [vision extra]
  timm:NAME                ``timm.create_model(NAME, pretrained=False)``          [timm extra]

``Name`` is called with no arguments unless ``--arch-arg key=value`` are given; values are
Python literals (``10``, ``0.5``, ``True``, ``'x'``, ``(3, 32)``) or else plain strings.
Nothing is ever downloaded.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from ncli.console import install_hint
from ncli.errors import EnvironmentProblem, InputError, UsageError

VISION_HINT = install_hint("vision")


def parse_arch_args(items) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--arch-arg {item!r}: expected key=value, e.g. --arch-arg num_classes=10")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key] = value
    return out


def _import_file(path: Path, spec_text: str):
    if not path.exists():
        raise InputError(f"--arch {spec_text}: no such file {path}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    modname = f"ncli_arch_{path.stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--arch {spec_text}: cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    # the file's own folder is importable while it loads (sibling imports, as `python file.py`)
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a file that calls sys.exit() is broken, not a way out
        sys.modules.pop(modname, None)
        raise InputError(f"--arch {spec_text}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


def _import_module(name: str, spec_text: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.split(".")[0] != exc.name.split(".")[0]:
            raise InputError(f"--arch {spec_text}: importing {name} failed: {exc}") from None
    except Exception as exc:
        raise InputError(f"--arch {spec_text}: importing {name} failed: {type(exc).__name__}: {exc}") from None
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            pass
        except Exception as exc:
            raise InputError(f"--arch {spec_text}: importing {name} failed: {type(exc).__name__}: {exc}") from None
        finally:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass
    raise InputError(
        f"--arch {spec_text}: no module named {name!r} (give a file instead: --arch path/to/{name.split('.')[-1]}.py:Name)"
    )


def _get_attr(module, name: str, spec_text: str):
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None)))
            raise InputError(
                f"--arch {spec_text}: {getattr(module, '__file__', module.__name__)} has no {name!r}"
                + (f" (callables there: {', '.join(have[:12])})" if have else "")
            )
        obj = getattr(obj, part)
    return obj


def build_model(spec_text: str, arch_args: dict[str, Any] | None = None):
    """Instantiate the model named by ``--arch``; returns an ``nn.Module`` in eval mode."""
    import torch.nn as nn

    kwargs = dict(arch_args or {})
    spec_text = spec_text.strip()
    if spec_text.startswith("torchvision:"):
        name = spec_text.split(":", 1)[1]
        try:
            import torchvision  # noqa: F401
            from torchvision import models as tvm
        except ImportError:
            raise EnvironmentProblem(f"--arch {spec_text} needs torchvision: {VISION_HINT}") from None
        try:
            factory = lambda **kw: tvm.get_model(name, weights=None, **kw)  # noqa: E731
            tvm.get_model_builder(name)
        except (ValueError, KeyError):
            raise InputError(f"--arch {spec_text}: torchvision has no model {name!r}") from None
        where = f"torchvision.models.{name}"
    elif spec_text.startswith("timm:"):
        name = spec_text.split(":", 1)[1]
        try:
            import timm
        except ImportError:
            raise EnvironmentProblem(f"--arch {spec_text} needs timm: {install_hint('timm')}") from None
        if not timm.is_model(name):
            raise InputError(f"--arch {spec_text}: timm has no model {name!r}")
        factory = lambda **kw: timm.create_model(name, pretrained=False, **kw)  # noqa: E731
        where = f"timm {name}"
    else:
        target, sep, attr = spec_text.rpartition(":")
        if not sep or not target or not attr:
            raise UsageError(
                f"--arch {spec_text!r}: expected path/to/file.py:Name, pkg.module:Name, torchvision:NAME or timm:NAME"
            )
        if target.endswith(".py") or "/" in target or os.sep in target:
            module = _import_file(Path(target).expanduser(), spec_text)
        else:
            module = _import_module(target, spec_text)
        factory = _get_attr(module, attr, spec_text)
        where = spec_text
        if not callable(factory):
            raise InputError(f"--arch {spec_text}: {attr} is not a class or function")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise InputError(f"--arch {where}: calling it with {kwargs or 'no arguments'} failed: {exc} (use --arch-arg key=value)") from None
    except (Exception, SystemExit) as exc:
        raise InputError(f"--arch {where}: building the model failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch {where} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
