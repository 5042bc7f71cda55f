"""torch.export programs (``.pt2``), loaded with ``torch.export.load``. Without
--trust-checkpoint an archive with native code (AOTInductor libraries, which torch would
dlopen) is refused from its member names before torch reads it, its embedded pickles are read
weights-only and its shape formulas must be plain sympy (see ``sandbox``); a program that needs
more is refused. A trusted program loads with torch's scratch files in a folder removed after.

A program whose inputs or outputs are structured types (transformers' ``ModelOutput`` classes)
can only be read once the package that registers those types with torch's pytree has been
imported: the installed ``transformers`` is imported first when the program names its types
(only packages in ``PYTREE_PACKAGES``; an archive never chooses what else is imported)."""

from __future__ import annotations

import importlib
import logging
import re
import zipfile
from contextlib import contextmanager

from ncli.console import install_hint
from ncli.errors import InputError, RefusedError, UsageError
from ncli.extract.forms.base import Checkpoint, Form, Probe, quiet
from ncli.extract.forms.sandbox import (
    UnsafeProgram, force_weights_only, native_code_members, plain_shape_formulas, private_temp_folder,
    pt2_unsafe_globals, refuse_unsafe,
)


PYTREE_PACKAGES = {"transformers": "hf"}  # package -> the ncli extra that installs it
_TREESPEC_TYPE = re.compile(r'type\W{1,6}((?:' + "|".join(PYTREE_PACKAGES) + r')(?:\.\w+)+)')


def pytree_types(path: str) -> list[str]:
    """Structured input/output types (of PYTREE_PACKAGES) named by the program's treespecs."""
    found: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/models/" in "/" + name and name.endswith(".json"):
                    text = archive.read(name).decode("utf-8", "replace")
                    found += [t for t in _TREESPEC_TYPE.findall(text) if t not in found]
    except (OSError, zipfile.BadZipFile):
        pass
    return found


def register_pytree_types(path: str, types: list[str]) -> None:
    """Import the modules that define ``types`` (they register themselves with torch's pytree)."""
    for type_name in types:
        package, module = type_name.split(".", 1)[0], type_name.rsplit(".", 1)[0]
        if package == "transformers":
            from ncli.extract.forms.huggingface import import_transformers

            import_transformers(f"{path}: a torch.export program with outputs of type {type_name}")
        try:
            importlib.import_module(module)
        except ImportError:
            raise InputError(
                f"{path}: the program's inputs or outputs are of type {type_name}, which the installed {package} "
                f"does not define; install the version it was exported with ({install_hint(PYTREE_PACKAGES[package])})"
            ) from None


@contextmanager
def torch_export_quiet():
    """No tracebacks logged by torch.export.load (its warnings before it raises)."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class TorchExport(Form):
    name = "torch.export"

    def detect(self, probe: Probe) -> bool:
        tails = probe.zip_tails
        return "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails)

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        import pickle

        import torch

        if ema:
            raise UsageError(f"{path}: --ema does not apply to a torch.export program")
        native = [] if trust else native_code_members(path)
        if native:
            shown = ", ".join(native[:3]) + (f", ... ({len(native)} in all)" if len(native) > 3 else "")
            raise RefusedError(
                f"{path}: is a torch.export program with native code ({shown}); torch would load and run it. "
                "Load it only if you trust its source: pass --trust-checkpoint"
            )
        refused: list[str] = []
        register_pytree_types(path, pytree_types(path))
        try:
            with quiet(), torch_export_quiet():
                if trust:
                    with private_temp_folder():
                        program = torch.export.load(path)
                else:
                    with force_weights_only(), plain_shape_formulas() as refused:
                        program = torch.export.load(path)
                    if refused:  # torch caught the refusal and went on: still refused
                        raise UnsafeProgram(refused[0])
        except UnsafeProgram:
            shown = refused[0] if len(refused[0]) <= 80 else refused[0][:77] + "..."
            raise RefusedError(
                f"{path}: is a torch.export program with a shape formula that is not plain sympy ({shown!r}); "
                "loading it would evaluate that text as Python. Load it only if you trust its source: pass --trust-checkpoint"
            ) from None
        except pickle.UnpicklingError:
            raise refuse_unsafe(path, pt2_unsafe_globals(path), "is a torch.export program with pickled Python objects") from None
        except Exception as exc:
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise refuse_unsafe(path, pt2_unsafe_globals(path), "is a torch.export program with pickled Python objects") from None
            raise InputError(f"{path}: cannot load the torch.export program ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        return Checkpoint(path, self, digest, None, program, None)

    def make_extractor(self, ckpt: Checkpoint, options):
        from ncli.extract.extractors.export import ExportExtractor

        return ExportExtractor(ckpt.module, options.classifier, options.layers, options.pool, options.amp, ckpt.path)

    def weights(self, ckpt: Checkpoint) -> dict:
        return dict(ckpt.module.state_dict)  # an ExportedProgram's state_dict is a mapping, not a method


TORCH_EXPORT = TorchExport()
