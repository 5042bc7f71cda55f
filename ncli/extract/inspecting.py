"""``ncli inspect``: what a checkpoint is, its linear layers, which one is the classifier and why."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

from ncli.errors import NcliError, UsageError
from ncli.extract.options import ExtractOptions


def _static_linear_guess(state_dict) -> list[tuple[str, tuple, bool]]:
    """(module, weight shape, has bias) for tensors that look like linear layers in a state_dict."""
    import torch

    out = []
    for key, value in state_dict.items():
        if key.endswith(".weight") and isinstance(value, torch.Tensor) and value.ndim == 2:
            module = key[: -len(".weight")]
            bias = state_dict.get(module + ".bias")
            out.append((module, tuple(value.shape), isinstance(bias, torch.Tensor) and bias.shape == (value.shape[0],)))
    return out


def _sample_input(extractor, data, options: ExtractOptions, input_shape):
    """The batch the classifier is found with, and how it was made: rows of --data, a random
    --input-shape batch, or what the extractor proposes (an exported program's example input,
    or a guess from the model's first layer)."""
    import torch

    if data:
        from ncli.extract.data import open_sources

        source = open_sources([data], x_key=options.x_key, y_key=options.y_key, allow_external=options.allow_external)[0]
        return source.head(8), f"8 samples of {source.description}"
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--input-shape {input_shape!r}: expected sizes like 3,32,32 (one sample, no batch)") from None
        return torch.randn(2, *shape), f"random input of shape (2, {', '.join(map(str, shape))})"
    return extractor.sample_input()


def _weights_only(ckpt) -> dict[str, Any]:
    """What inspect says of a file of weights without --arch: its 2-D '.weight' tensors."""
    state_dict = ckpt.state_dict
    return {
        "form": ckpt.form.name, "sha256": ckpt.sha256, "key": ckpt.container_key, "epoch": ckpt.epoch, "step": ckpt.step,
        **ckpt.details,
        "num_tensors": len(state_dict),
        "num_values": int(sum(v.numel() for v in state_dict.values() if v.is_floating_point())),
        "linear_layers": [
            {"name": n, "in_features": s[1], "out_features": s[0], "bias": b} for n, s, b in _static_linear_guess(state_dict)
        ],
        "chosen": None,
        "why": ("weights only: give --arch path/to/file.py:Name to build the model and find the classifier "
                "by a forward pass (the list above is every 2-D '.weight' tensor)"),
    }


def inspect_checkpoint(checkpoint, options: ExtractOptions | None = None, *, data=None, input_shape=None) -> dict[str, Any]:
    """What ``ncli inspect`` reports, as a JSON-able dict. ``options``: arch, arch_args, ema,
    trust, classifier, x_key, y_key are read."""
    import torch

    from ncli.extract.extractors.base import ForwardFailed
    from ncli.extract.forms import load_checkpoint
    from ncli.extract.inputs import map_tensors
    from ncli.extract.model import prepare

    options = options or ExtractOptions()
    record: dict[str, Any] = {"checkpoint": str(checkpoint)}
    if not options.arch:
        ckpt = load_checkpoint(checkpoint, trust=options.trust, ema=options.ema)
        if ckpt.form.weights_without_model:
            record.update(_weights_only(ckpt))
            return record
    prepared = prepare(checkpoint, replace(options, layers=(), pool="none", amp=False))
    ckpt, extractor = prepared.checkpoint, prepared.extractor
    record.update(form=ckpt.form.name, sha256=ckpt.sha256, key=ckpt.container_key, epoch=ckpt.epoch, step=ckpt.step,
                  arch=options.arch, num_parameters=extractor.num_parameters(),
                  stripped_prefixes="".join(prepared.load_info.get("stripped_prefixes", [])) or None,
                  dropped_keys=len(prepared.load_info.get("dropped_keys", [])) or None, **ckpt.details)
    inputs, how = _sample_input(extractor, data, options, input_shape)
    ran = None
    if inputs is not None:
        try:
            with torch.inference_mode():
                extractor.discover(map_tensors(inputs, lambda t: t.to(extractor.dtype) if t.is_floating_point() else t))
            ran = how
        except ForwardFailed as exc:
            if data or input_shape:
                raise
            record["forward_error"] = exc.cause[:200]  # a guessed input: report it, do not fail
        except NcliError:
            raise
        except Exception as exc:
            if data or input_shape:
                raise
            record["forward_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    known = ran or extractor.found_statically  # calls and outputs need a forward pass unless a graph was read
    record["linear_layers"] = [
        {"name": r.name, "in_features": r.in_features, "out_features": r.out_features, "bias": r.bias,
         "calls": r.calls if known else None, "is_output": r.is_output if known else None}
        for r in getattr(extractor, "rows", [])
    ]
    if not known:
        record["chosen"] = None
        record["why"] = ("the model was not run (give --data FILE or --input-shape C,H,W): a forward pass is needed "
                         "to see which linear layer produces the output"
                         + (f"; trying a guessed input failed: {record['forward_error']}" if record.get("forward_error") else ""))
    else:
        record["chosen"] = extractor.classifier
        record["why"] = extractor.found_by
        if ran:
            record["ran_on"] = ran
            record["reconstruction_error"] = extractor.first_batch_error
            record["num_classes"] = extractor.num_classes
            record["feature_dim"] = extractor.feature_dim
        if extractor.inspect_note:
            record["note"] = extractor.inspect_note
    extractor.close()
    return record


def print_inspect(rec: dict, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rec, default=str) + "\n")
        return
    from rich.console import Console
    from rich.markup import escape as escape_markup
    from rich.table import Table

    from ncli.console import printable

    def escape(text: str) -> str:  # names from the checkpoint: control characters escaped, no markup
        return escape_markup(printable(text))

    con = Console()
    con.print(f"[bold]{escape(rec['checkpoint'])}[/bold]", highlight=False, soft_wrap=True)
    facts = [("form", rec.get("form")), ("weights under", rec.get("key")), ("epoch", rec.get("epoch")), ("step", rec.get("step")),
             ("arch", rec.get("arch")), ("prefix stripped", rec.get("stripped_prefixes")),
             ("keys dropped", rec.get("dropped_keys")), ("architecture", rec.get("hf_architecture")),
             ("EMA weights", rec.get("ema_weights")), ("not loaded", rec.get("objects_not_loaded")),
             ("parameters", f"{rec['num_parameters']:,}" if rec.get("num_parameters") else None),
             ("tensors", f"{rec['num_tensors']:,} ({rec['num_values']:,} numbers)" if rec.get("num_tensors") else None),
             ("sha256", rec.get("sha256"))]
    for k, v in facts:
        if v is not None:
            con.print(escape(f"  {k:<16}{v}"), highlight=False, soft_wrap=True)
    t = Table(title="linear layers", title_justify="left", show_edge=False)
    for col in ("module", "in", "out", "bias", "calls", "gives output", ""):
        t.add_column(col)
    for r in rec.get("linear_layers", []):
        chosen = r["name"] == rec.get("chosen")
        t.add_row(
            escape(r["name"] or "(root)"), str(r["in_features"]), str(r["out_features"]), "yes" if r["bias"] else "no",
            "" if r.get("calls") is None else str(r["calls"]),
            "" if r.get("is_output") is None else ("yes" if r["is_output"] else ""),
            "<- classifier" if chosen else "", style="bold" if chosen else None,
        )
    con.print(t)
    if not rec.get("linear_layers"):
        con.print("  (no linear layers)")
    if rec.get("chosen") is not None:
        con.print(f"classifier: [bold]{escape(rec['chosen'])}[/bold] ({escape(str(rec.get('why')))})", highlight=False, soft_wrap=True)
        if rec.get("ran_on"):
            con.print(
                escape(f"checked on {rec['ran_on']}: C = {rec['num_classes']}, p = {rec['feature_dim']}, "
                f"max |features·Wᵀ + b − logits| = {rec['reconstruction_error']:.3g}"), highlight=False, soft_wrap=True)
    else:
        con.print(escape(f"classifier: not determined: {rec.get('why')}"), highlight=False, soft_wrap=True)
    if rec.get("note"):
        con.print(escape(f"note: {rec['note']}"), highlight=False, soft_wrap=True)
