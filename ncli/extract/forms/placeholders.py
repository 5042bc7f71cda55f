"""Training checkpoints whose weights are plain tensors but whose other entries hold custom
Python objects: Lightning + Hydra checkpoints keep OmegaConf's ``DictConfig`` in
``hyper_parameters``, other trainers keep their config classes beside the weights.

torch's own weights-only unpickler reads the file, with every global the file names that it
does not allow replaced by an inert ``Placeholder`` class of that name: building one stores
its arguments and state and runs nothing the file names. The tensors come out as they are;
the placeholders stay where they were and are never used. A whole pickled model comes out as
placeholders too, holds no state_dict of tensors, and is refused as before.
"""

from __future__ import annotations

from typing import Any


# Modules whose functions run code, reach the system or the interpreter: a file naming any of
# them (exec, eval, os.system, getattr, ...) is not read with placeholders but refused, so
# that a checkpoint carrying a payload is reported as one, not quietly taken for its weights.
RUNS_CODE = frozenset(
    "builtins __builtin__ os posix nt sys subprocess importlib runpy pty socket shutil pickle _pickle marshal "
    "ctypes code codeop webbrowser functools operator types inspect pydoc io tempfile multiprocessing "
    "threading signal asyncio pathlib glob urllib http ftplib smtplib telnetlib".split()
)
PLAIN_BUILTINS = frozenset(
    "builtins.dict builtins.list builtins.tuple builtins.set builtins.frozenset builtins.int builtins.float "
    "builtins.str builtins.bool builtins.bytes builtins.complex builtins.slice builtins.object".split()
)


def runs_code(name: str) -> bool:
    """Whether the global ``name`` (``module.qualname``) belongs to a module that runs code."""
    return name not in PLAIN_BUILTINS and name.split(".", 1)[0] in RUNS_CODE


class Placeholder:
    """Stands in for an object of a class the file names (``placeholder_of``); inert."""

    placeholder_of = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args
        self.items: dict = {}
        self.elements: list = []
        self.state: Any = None

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.items[key] = value

    def append(self, value) -> None:
        self.elements.append(value)

    def extend(self, values) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.placeholder_of}>"


def _placeholder_class(name: str) -> type:
    return type("Placeholder", (Placeholder,), {"placeholder_of": name, "__module__": __name__})


def load_with_placeholders(path: str, names: list[str]):
    """``torch.load(weights_only=True)`` with the globals ``names`` as placeholders; raises
    what torch raises when the file needs more than that."""
    import torch

    from ncli.extract.forms.base import quiet
    from ncli.extract.forms.sandbox import _extra_safe_globals

    stand_ins = [(_placeholder_class(name), name) for name in names]
    with quiet(), torch.serialization.safe_globals(_extra_safe_globals() + stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)
