"""A checkpoint's weights loaded into an --arch model.

Key alignment (``align_state_dict``) is guided by the model's own keys: ``_orig_mod.``
(torch.compile) is removed anywhere in a key; leading components shared by all keys
(``module.`` from DataParallel/DDP, ``model.`` from Lightning, ``model.module.`` from both, any
wrapper) are stripped when that makes more keys match; and when the keys under one or two of
``module.``/``model.``/``net.``/``network.`` match the model exactly, the other keys (e.g. a
Lightning module's loss buffers) are dropped and counted. Loading is then strict.
"""

from __future__ import annotations

from typing import Mapping

from ncli.errors import InputError

WRAPPER_PREFIXES = ("module.", "model.", "net.", "network.")


def _overlap(keys, target: set) -> int:
    return sum(1 for k in keys if k in target)


def _strip_shared(cur: dict, target: set) -> tuple[dict, str] | None:
    """The keys without the first 1..3 components that every key shares (``model.module.``
    from a DataParallel model inside a Lightning module), the fewest that make more keys match."""
    now = _overlap(cur, target)
    for depth in (1, 2, 3):
        parts = [k.split(".", depth) for k in cur]
        if any(len(p) <= depth for p in parts):
            return None
        heads = {tuple(p[:depth]) for p in parts}
        if len(heads) != 1:
            return None
        stripped = {p[depth]: v for p, v in zip(parts, cur.values())}
        if _overlap(stripped, target) > now:
            return stripped, ".".join(heads.pop()) + "."
    return None


def align_state_dict(sd: Mapping, model_keys) -> tuple[dict, list[str], list[str]]:
    """Rename checkpoint keys to the model's; -> (state_dict, steps taken, dropped keys)."""
    target = set(model_keys)
    cur = dict(sd)
    steps: list[str] = []
    dropped: list[str] = []
    if any("_orig_mod." in k for k in cur):
        cur = {k.replace("_orig_mod.", ""): v for k, v in cur.items()}
        steps.append("_orig_mod.")
    nested = [a + b for a in WRAPPER_PREFIXES for b in WRAPPER_PREFIXES]
    for _ in range(6):
        if set(cur) == target:
            break
        stripped = _strip_shared(cur, target)
        if stripped is not None:
            cur = stripped[0]
            steps.append(stripped[1])
            continue
        done = False
        for prefix in (*WRAPPER_PREFIXES, *nested):
            sub = {k[len(prefix):]: v for k, v in cur.items() if k.startswith(prefix)}
            if sub and set(sub) == target and len(sub) < len(cur):
                dropped = [k for k in cur if not k.startswith(prefix)]
                cur = sub
                steps.append(prefix)
                done = True
                break
        if not done:
            break
    return cur, steps, dropped


def _short(keys, n=6) -> str:
    keys = list(keys)
    text = ", ".join(keys[:n])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(model, sd: Mapping, *, path: str, arch: str) -> dict:
    """Strictly load ``sd`` into ``model``; -> info for provenance."""
    own = model.state_dict()
    aligned, steps, dropped = align_state_dict(sd, own.keys())
    missing = [k for k in own if k not in aligned]
    unexpected = [k for k in aligned if k not in own]
    shapes = [
        f"{k} {tuple(aligned[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in aligned and tuple(aligned[k].shape) != tuple(own[k].shape)
    ]
    complex_keys = [k for k in own if k in aligned and aligned[k].is_complex() and not own[k].is_complex()]
    if complex_keys:  # load_state_dict would drop the imaginary parts with a warning
        raise InputError(f"{path}: {_short(complex_keys, 3)} hold complex numbers where --arch {arch} has real parameters")
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
