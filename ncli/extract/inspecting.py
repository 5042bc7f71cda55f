"""``ncli inspect``: what a checkpoint is, its linear layers, which one is the classifier and why."""

from __future__ import annotations

import json
import sys
from typing import Any

from ncli.errors import NcliError, UsageError


def _sample_input(prep, data, x_key, y_key, input_shape):
    import torch

    from ncli.extract.discover import guess_input

    if data:
        from ncli.extract.data import open_sources

        src = open_sources([data], x_key=x_key, y_key=y_key)[0]
        return src.head(8), f"8 samples of {src.description}"
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--input-shape {input_shape!r}: expected sizes like 3,32,32 (one sample, no batch)") from None
        return torch.randn(2, *shape), f"random input of shape (2, {', '.join(map(str, shape))})"
    ex = prep.extractor
    if ex.kind == "torch.export":
        ep = prep.ckpt.module
        ex_in = getattr(ep, "example_inputs", None)
        if ex_in and ex_in[0] and isinstance(ex_in[0][0], torch.Tensor):
            return ex_in[0][0], "the program's example input"
    model = prep.model if prep.model is not None else getattr(prep.extractor, "model", None)
    if model is None and ex.kind == "torchscript":
        model = ex.sm
    if model is not None:
        x = guess_input(model)
        if x is not None:
            return x, f"random input of shape {tuple(x.shape)} guessed from the first layer"
    return None, None


def inspect_checkpoint(checkpoint, *, arch=None, arch_args=None, ema=False, trust=False, classifier=None,
                       data=None, x_key=None, y_key=None, input_shape=None) -> dict[str, Any]:
    import torch

    from ncli.extract.checkpoint import load_checkpoint
    from ncli.extract.discover import ForwardFailed, static_linear_guess
    from ncli.extract.run import prepare

    rec: dict[str, Any] = {"checkpoint": str(checkpoint)}
    if not arch:
        ckpt = load_checkpoint(checkpoint, trust=trust, ema=ema)
        if ckpt.form in ("state_dict", "safetensors"):
            rec.update(form=ckpt.form, sha256=ckpt.sha256, key=ckpt.container_key, epoch=ckpt.epoch, step=ckpt.step,
                       num_tensors=len(ckpt.state_dict),
                       num_values=int(sum(v.numel() for v in ckpt.state_dict.values() if v.is_floating_point())))
            rec["linear_layers"] = [
                {"name": n, "in_features": s[1], "out_features": s[0], "bias": b} for n, s, b in static_linear_guess(ckpt.state_dict)
            ]
            rec["chosen"] = None
            rec["why"] = ("weights only: give --arch path/to/file.py:Name to build the model and find the classifier "
                          "by a forward pass (the list above is every 2-D '.weight' tensor)")
            return rec
    prep = prepare(checkpoint, arch=arch, arch_args=arch_args, ema=ema, trust=trust, classifier=classifier)
    ckpt, ex = prep.ckpt, prep.extractor
    model = prep.model if prep.model is not None else getattr(ex, "model", None)
    nparams = None
    if model is not None:
        nparams = int(sum(p.numel() for p in model.parameters()))
    elif ex.kind == "torchscript":
        nparams = int(sum(p.numel() for p in ex.sm.parameters()))
    rec.update(form=ckpt.form, sha256=ckpt.sha256, key=ckpt.container_key, epoch=ckpt.epoch, step=ckpt.step,
               arch=arch, num_parameters=nparams, stripped_prefixes="".join(prep.load_info.get("stripped_prefixes", [])) or None,
               dropped_keys=len(prep.load_info.get("dropped_keys", [])) or None)
    x, how = _sample_input(prep, data, x_key, y_key, input_shape)
    ran = None
    if x is not None:
        try:
            with torch.inference_mode():
                xx = x if x.is_floating_point() is False else x.to(ex.dtype)
                ex.discover(xx)
            ran = how
        except ForwardFailed as exc:
            if data or input_shape:
                raise
            rec["forward_error"] = exc.cause[:200]  # a guessed input: report it, do not fail
        except NcliError:
            raise
        except Exception as exc:
            if data or input_shape:
                raise
            rec["forward_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    rows = getattr(ex, "rows", [])
    rec["linear_layers"] = [
        {"name": r.name, "in_features": r.in_features, "out_features": r.out_features, "bias": r.bias,
         "calls": r.calls if ran or ex.kind != "eager" else None, "is_output": r.is_output if ran or ex.kind != "eager" else None}
        for r in rows
    ]
    if ex.kind == "eager" and not ran:
        rec["chosen"] = None
        rec["why"] = ("the model was not run (give --data FILE or --input-shape C,H,W): a forward pass is needed "
                      "to see which linear layer produces the output"
                      + (f"; trying a guessed input failed: {rec['forward_error']}" if rec.get("forward_error") else ""))
    else:
        rec["chosen"] = ex.classifier
        rec["why"] = ex.found_by
        if ran:
            rec["ran_on"] = ran
            rec["reconstruction_error"] = ex.first_batch_error
            rec["num_classes"] = ex.num_classes
            rec["feature_dim"] = ex.feature_dim
        if ex.kind == "torchscript":
            rec["note"] = ("TorchScript: hooks do not run; features are captured by running the archive with the "
                           "classifier's weight set to the identity (exact); --layer needs --arch")
    ex.close()
    return rec


def print_inspect(rec: dict, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rec, default=str) + "\n")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{escape(rec['checkpoint'])}[/bold]", highlight=False, soft_wrap=True)
    facts = [("form", rec.get("form")), ("weights under", rec.get("key")), ("epoch", rec.get("epoch")), ("step", rec.get("step")),
             ("arch", rec.get("arch")), ("prefix stripped", rec.get("stripped_prefixes")),
             ("keys dropped", rec.get("dropped_keys")), ("parameters", f"{rec['num_parameters']:,}" if rec.get("num_parameters") else None),
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
