"""Hugging Face ``save_pretrained`` folders: ``config.json`` and the weights
(``model.safetensors``, sharded or not, or ``pytorch_model.bin``) [hf extra].

The model class is the config's ``architectures`` entry, built by ``transformers`` and loaded
with ``from_pretrained``: only it knows how a version of transformers renames keys between the
file and the module (transformers 5 does for ViT, DeiT, Swin, DINOv2). No --arch is needed.
Nothing is downloaded (``local_files_only``, ``HF_HUB_OFFLINE``); ``.bin`` weights are read with
``weights_only=True``; a model whose code lives in the folder (``auto_map``) runs only with
--trust-checkpoint. A causal language model (``…ForCausalLM``, ``GPT2LMHeadModel``) gets
token-level rows (``extractors.causal_lm``); any other model the eager extractor, with
--layer outputs read as token layouts (N, L, D).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from ncli.console import install_hint
from ncli.errors import EnvironmentProblem, InputError, NcliError, RefusedError, UsageError
from ncli.extract.forms.base import EPOCH_KEYS, STEP_KEYS, Checkpoint, Form, Probe, position, quiet, sha256_folder

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TRAINER_STATE = "trainer_state.json"  # a Trainer's checkpoint-N folder: epoch and global_step


def import_transformers(what: str):
    """``transformers``, imported offline (nothing is ever downloaded); a clear error without it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise EnvironmentProblem(f"{what} needs the transformers package: {install_hint('hf')}") from None
    return transformers


@contextmanager
def hf_quiet(transformers):
    """No progress bars or log lines from transformers while it loads (restored after)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with quiet():
            yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def weight_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n in WEIGHTS or n.endswith(".safetensors") or
                  (n.startswith("pytorch_model") and n.endswith(".bin")))


def is_causal_lm(model) -> bool:
    """A causal language model: its class is one transformers lists for AutoModelForCausalLM
    (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...) or, for a folder's own code, ends so."""
    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return False
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return name in names


def sample_input(model):
    """A batch of 2 made from the model's config, for ``ncli inspect`` without data: pixels of
    the configured image size, or 8 token ids with an attention mask."""
    import torch

    config = model.config
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if isinstance(size, (int, list, tuple)) and channels:
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return torch.randn(2, int(channels), int(height), int(width)), f"random pixels (2, {channels}, {height}, {width}) from the config"
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "random token ids (2, 8) from the config"


class HuggingFaceFolder(Form):
    name = "huggingface"

    def detect(self, probe: Probe) -> bool:
        return probe.is_dir and CONFIG in probe.dir_names

    def digest(self, path: str) -> str:
        folder = Path(path)
        return sha256_folder(folder, [CONFIG, *weight_files(folder)])

    def load(self, path: str, digest: str, *, trust: bool, ema: bool) -> Checkpoint:
        folder = Path(path)
        if ema:
            raise UsageError(f"{path}: --ema does not apply to a Hugging Face model folder (it holds one set of weights)")
        try:
            config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}/{CONFIG}: cannot read it as JSON ({exc})") from None
        if not isinstance(config, dict):
            raise InputError(f"{path}/{CONFIG}: not a JSON object")
        if not weight_files(folder):
            raise InputError(f"{path}: holds {CONFIG} but no weights ({', '.join(WEIGHTS)})")
        architectures = config.get("architectures") or []
        if not architectures or not isinstance(architectures[0], str):
            raise InputError(f"{path}/{CONFIG}: names no model class ('architectures'); ncli builds the model from it")
        class_name = architectures[0]
        transformers = import_transformers(f"{path}: a Hugging Face model folder")
        model = self._from_pretrained(transformers, path, class_name, config.get("auto_map") or {}, trust)
        state = self._trainer_state(folder)
        details = {"hf_architecture": class_name, "transformers_version": transformers.__version__}
        return Checkpoint(path, self, digest, None, model.eval(), None, position(state, EPOCH_KEYS),
                          position(state, STEP_KEYS), details)

    @staticmethod
    def _trainer_state(folder: Path) -> dict:
        try:
            state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    @staticmethod
    def _from_pretrained(transformers, path: str, class_name: str, auto_map: dict, trust: bool):
        model_class = getattr(transformers, class_name, None)
        if model_class is None:
            autos = [auto for auto, ref in auto_map.items() if str(ref).rsplit(".", 1)[-1] == class_name]
            if not autos or getattr(transformers, autos[0], None) is None:
                raise InputError(
                    f"{path}: transformers {transformers.__version__} has no model class {class_name!r} (config.json "
                    "'architectures'), and the folder's auto_map does not name it"
                )
            code = sorted(n for n in os.listdir(path) if n.endswith(".py"))
            if not trust:
                raise RefusedError(
                    f"{path}: the model class {class_name} is Python code in the folder ({', '.join(code) or 'auto_map'}); "
                    "running it needs --trust-checkpoint. Load it only if you trust its source"
                )
            model_class = getattr(transformers, autos[0])
        try:
            with hf_quiet(transformers):
                model, info = model_class.from_pretrained(
                    path, local_files_only=True, trust_remote_code=trust, weights_only=True, output_loading_info=True
                )
        except NcliError:
            raise
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [""])[0][:300]
            if "trust_remote_code" in text:
                raise RefusedError(f"{path}: the model needs Python code from the folder; running it needs --trust-checkpoint") from None
            raise InputError(f"{path}: transformers cannot load the {class_name} model ({type(exc).__name__}: {text})") from None
        missing = list(info.get("missing_keys") or [])
        mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
        if missing or mismatched:
            shown = ", ".join((missing or mismatched)[:6]) + (" ..." if len(missing or mismatched) > 6 else "")
            what = "missing from the weights" if missing else "of another shape in the weights"
            raise InputError(f"{path}: {len(missing or mismatched)} tensors of the {class_name} model are {what}: {shown}")
        return model

    def make_extractor(self, ckpt: Checkpoint, options):
        from ncli.extract.extractors.causal_lm import CausalLMExtractor
        from ncli.extract.extractors.eager import EagerExtractor

        if is_causal_lm(ckpt.module):
            return CausalLMExtractor(ckpt.module, options.classifier, options.layers, options.pool, options.amp)
        return EagerExtractor(ckpt.module, options.classifier, options.layers, options.pool, options.amp,
                              token_layout=True, sample=sample_input(ckpt.module))


HUGGINGFACE = HuggingFaceFolder()
