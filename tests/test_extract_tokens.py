"""Issue 12 without optional packages: inputs named after the model's arguments in array
files, --pool over tokens (N, L, D), each layer's depth and the forward order in measure and
compare, and a causal language model's next-token rows (the extractor and the source wrapper
on a tiny torch LM; the transformers end-to-end runs are in test_extract_hf.py)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, invoke, model, ok, read

N_TRAIN, N_TEST = 23, 11


def token_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and a right-padded attention mask (every sequence keeps at least 2 tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, em.VOCAB, (n, em.SEQ))
    lengths = rng.integers(2, em.SEQ + 1, n)
    mask = (np.arange(em.SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask


@pytest.fixture
def token_file(tmp_path):
    """input_ids/attention_mask/y per split, as a tokenised dataset is saved."""
    path = tmp_path / "tokens.npz"
    arrays = {}
    for split, n, seed in (("train", N_TRAIN, 1), ("test", N_TEST, 2)):
        ids, mask = token_arrays(n, seed)
        arrays.update({f"input_ids_{split}": ids, f"attention_mask_{split}": mask, f"y_{split}": np.arange(n) % em.C})
    np.savez(path, **arrays)
    return path


def hooked_named(m: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, name: str = "fc", layer: str | None = None):
    """The model's own forward on named inputs, with pre-hooks on ``name`` (and a hook on ``layer``)."""
    got = {}
    handles = [dict(m.named_modules())[name].register_forward_pre_hook(lambda _m, a: got.__setitem__("h", a[0].detach().clone()))]
    if layer is not None:
        handles.append(dict(m.named_modules())[layer].register_forward_hook(lambda _m, a, o: got.__setitem__("layer", o.detach().clone())))
    try:
        with torch.no_grad():
            out = m(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    finally:
        for h in handles:
            h.remove()
    out = out["logits"] if isinstance(out, dict) else out
    return got["h"].numpy(), out.numpy(), got.get("layer")


def test_named_arrays_pass_every_input_by_name(tmp_path, token_file):
    """A file of input_ids_<split>, attention_mask_<split>, y_<split>: the model gets both by
    name (the mask is not dropped), a bare FILE finds both splits."""
    m = model("MaskedTokens")
    ck = tmp_path / "m.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("MaskedTokens"), "--data", token_file, "-o", out, "-b", "5", "-q"))
    with np.load(token_file) as z:
        for split in ("train", "test"):
            d = read(out, split)
            h, logits, _ = hooked_named(m, z[f"input_ids_{split}"], z[f"attention_mask_{split}"])
            np.testing.assert_allclose(d["features"], h, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(d["logits"], logits, rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(d["labels"], z[f"y_{split}"])
            # without the mask the features would differ: the padding counts in the mean
            h_unmasked, _, _ = hooked_named(m, z[f"input_ids_{split}"], np.ones_like(z[f"attention_mask_{split}"]))
            assert np.abs(h_unmasked - h).max() > 1e-3
    assert "input_ids_train, attention_mask_train, y_train" in read(out)["attrs"]["data_sources"]


def test_named_arrays_refuse_ambiguity_and_missing_labels(tmp_path):
    ids, mask = token_arrays(8, 0)
    ck = tmp_path / "m.pt"
    torch.save(model("MaskedTokens").state_dict(), ck)
    both = tmp_path / "both.npz"
    np.savez(both, x=ids, attention_mask=mask, y=np.arange(8) % em.C)
    r = invoke("extract", ck, "--arch", arch("MaskedTokens"), "--data", both, "-o", tmp_path / "o.h5")
    assert r.exit_code == 2 and "both x and inputs named for the model (attention_mask)" in r.stderr
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input_ids=ids, attention_mask=mask)
    r = invoke("extract", ck, "--arch", arch("MaskedTokens"), "--data", unlabelled, "-o", tmp_path / "o.h5")
    assert r.exit_code == 3 and "no labels" in r.stderr and "causal language model" in r.stderr
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, input_ids=ids, attention_mask=mask, labels=np.arange(8) % em.C)  # "labels", as transformers names them
    ok(invoke("extract", ck, "--arch", arch("MaskedTokens"), "--data", labelled, "-o", tmp_path / "o.h5", "-q"))
    np.testing.assert_array_equal(read(tmp_path / "o.h5")["labels"], np.arange(8) % em.C)


@pytest.mark.parametrize("pool", ["avg", "mean", "max", "cls", "last"])
def test_pool_over_tokens(tmp_path, token_file, pool):
    """(N, L, D) layer outputs are pooled over the tokens, the padding left out; never over D."""
    m = model("TokenEncoder")
    ck = tmp_path / "m.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("TokenEncoder"), "--data", token_file, "--layer", "block", "--pool", pool,
              "-o", out, "-q"))
    with np.load(token_file) as z:
        ids, mask = z["input_ids_train"], z["attention_mask_train"]
    h, _, tokens = hooked_named(m, ids, mask, layer="block")
    tokens = tokens.double().numpy()
    keep = mask.astype(bool)
    last = keep.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1)
    expected = {
        "avg": (tokens * keep[..., None]).sum(1) / keep.sum(1, keepdims=True),
        "max": np.where(keep[..., None], tokens, -np.inf).max(1),
        "cls": tokens[:, 0],
        "last": tokens[np.arange(len(tokens)), last],
    }
    expected["mean"] = expected["avg"]
    stored = read(out)["layers"]["block"]
    assert stored.shape == (N_TRAIN, em.P)  # (N, D), not (N, L)
    np.testing.assert_allclose(stored, expected[pool], rtol=1e-5, atol=1e-6)
    if pool in ("avg", "mean"):  # the block's masked mean is exactly the classifier's input
        np.testing.assert_allclose(stored, h, rtol=1e-5, atol=1e-6)
    with h5py.File(out) as f:
        pooled = f["train/layers/block"].attrs["pooled"]
    assert pooled.startswith("tokens: ") and ("attention mask" in pooled) == (pool != "cls")


def test_token_pools_refuse_channels_first_outputs(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(10, em.IN)).astype(np.float32), y=np.arange(10) % em.C)
    ck = tmp_path / "m.pt"
    torch.save(model("SmallConv").state_dict(), ck)
    r = invoke("extract", ck, "--arch", arch("SmallConv"), "--data", data, "--layer", "conv", "--pool", "cls", "-o", tmp_path / "o.h5")
    assert r.exit_code == 2 and "--pool cls pools tokens" in r.stderr


def test_layers_keep_the_forward_order(tmp_path):
    """Depth recorded at extraction orders measure --layer all and compare --by layer:
    blocks.1, blocks.2, blocks.10, then the features (by name: blocks.1, blocks.10, blocks.2)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.normal(size=(40, em.IN)).astype(np.float32), y_train=np.arange(40) % em.C)
    m = model("Deep")
    ck = tmp_path / "m.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "out.h5"
    ok(invoke("extract", ck, "--arch", arch("Deep"), "--data", data, "--layer", "blocks.10", "--layer", "stem",
              "--layer", "blocks.1", "--layer", "blocks.2", "-o", out, "-q"))
    with h5py.File(out) as f:
        depth = {name: int(ds.attrs["depth"]) for name, ds in f["train/layers"].items()}
    assert depth == {"stem": 0, "blocks.1": 1, "blocks.2": 2, "blocks.10": 3}
    forward = ["stem", "blocks.1", "blocks.2", "blocks.10"]
    lines = ok(invoke("measure", out, "--layer", "all", "--json")).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["layer"] for r in records] == [*forward, "fc"]  # the penultimate features last
    assert [r.get("layer_depth") for r in records] == [0, 1, 2, 3, None]
    compared = json.loads(ok(invoke("compare", out, "--by", "layer", "--json")).stdout)
    assert compared["runs"] == records  # the same records in the same order
    # measure records given in another order (JSON lines) come out in the same order
    shuffled = tmp_path / "records.jsonl"
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    compared = json.loads(ok(invoke("compare", shuffled, "--by", "layer", "--json")).stdout)
    assert [r["layer"] for r in compared["runs"]] == [*forward, "fc"]


def test_next_token_rows_of_a_causal_lm(tmp_path):
    """One row per predicted position (s, t) with mask[s, t] = mask[s, t+1] = 1, in (sequence,
    position) order: the output layer's input at t, labelled input_ids[s, t+1], index s·L + t;
    W is the tied output layer's weight, no bias."""
    from ncli.extract.data import ArraySource
    from ncli.extract.data.tokens import NextTokenSource
    from ncli.extract.extractors.causal_lm import CHECK_ROWS, CausalLMExtractor

    ids, mask = token_arrays(9, 3)
    mask[4, :] = 0
    mask[4, 2:4] = 1  # a sequence padded on both sides: only position 2 predicts
    data = tmp_path / "lm.npz"
    np.savez(data, input_ids=ids, attention_mask=mask)
    m = model("TinyLM")
    extractor = CausalLMExtractor(m)
    source = NextTokenSource(ArraySource("train", str(data)))
    assert source.label_range() == (int(ids.min()), int(ids.max()))
    rows = []
    with torch.inference_mode():
        extractor.discover(source.head(4))
        for batch in source.batches(4, start=0):
            h, z, _ = extractor(batch.inputs)
            rows.append((h.numpy(), z.numpy(), batch.labels, batch.index))
    features = np.concatenate([r[0] for r in rows])
    labels = np.concatenate([r[2] for r in rows])
    index = np.concatenate([r[3] for r in rows])
    assert all(len(r[1]) == min(CHECK_ROWS, len(r[0])) for r in rows)  # logits: the check's sample only
    expected_s, expected_t = [], []
    for s in range(len(ids)):
        for t in range(em.SEQ - 1):
            if mask[s, t] and mask[s, t + 1]:
                expected_s.append(s)
                expected_t.append(t)
    expected_s, expected_t = np.array(expected_s), np.array(expected_t)
    h_all = m.block(m.emb(torch.from_numpy(ids))).detach().numpy()
    np.testing.assert_allclose(features, h_all[expected_s, expected_t], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, ids[expected_s, expected_t + 1])
    np.testing.assert_array_equal(index, expected_s * em.SEQ + expected_t)
    assert extractor.classifier == "lm_head" and extractor.bias is None
    assert extractor.weight.data_ptr() == m.emb.weight.data_ptr()  # tied weights
    assert extractor.stores_logits is False and extractor.token_rows is True
