"""Model inputs that are named tensors (input_ids + attention_mask, as language models take
them): the input helpers, the eager extractor, and a whole extraction from a data source that
yields such batches. A new input kind is one data source and one model spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, model, read
from ncli.extract.data import BatchOut
from ncli.extract.extractors.base import ForwardFailed
from ncli.extract.extractors.eager import EagerExtractor
from ncli.extract.inputs import batch_len, call_model, describe, to_device


def named_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, em.VOCAB, (n, em.SEQ), generator=g)
    lengths = torch.randint(1, em.SEQ + 1, (n,), generator=g)
    mask = (torch.arange(em.SEQ)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def by_hand(m: em.MaskedTokens, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Features (the classifier's input) and logits in float64 numpy, from the weights."""

    def weights(layer):
        return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()

    embed = m.emb.weight.detach().double().numpy()
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy().astype(np.float64)
    pooled = (embed[ids] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    (W1, b1), (W, b) = weights(m.proj[0]), weights(m.fc)
    h = np.maximum(pooled @ W1.T + b1, 0.0)
    return h, h @ W.T + b


def test_input_helpers_on_a_tensor_and_on_named_tensors():
    x = torch.zeros(5, 3, dtype=torch.float32)
    named = {"input_ids": torch.zeros(5, 7, dtype=torch.int32), "mask": torch.ones(5, 7, dtype=torch.bool),
             "scale": torch.ones(5, 1, dtype=torch.float32)}
    assert to_device(x, "cpu", torch.float64).dtype == torch.float64
    moved = to_device(named, "cpu", torch.float64)
    assert list(moved) == list(named)  # names and order kept
    assert (moved["input_ids"].dtype, moved["mask"].dtype, moved["scale"].dtype) == (torch.int64, torch.bool, torch.float64)
    assert batch_len(x) == 5 and batch_len(named) == 5
    assert call_model(lambda t: t.shape, x) == (5, 3)
    assert call_model(lambda input_ids, mask, scale: input_ids.shape[1] + scale.shape[1], named) == 8
    assert describe(x) == "inputs of shape (5, 3), float32"
    assert describe(named) == "inputs input_ids (5, 7) int32, mask (5, 7) bool, scale (5, 1) float32"


def test_the_eager_extractor_takes_named_inputs():
    m = model("MaskedTokens")
    batch = named_batch(9)
    extractor = EagerExtractor(m, layers=("proj",))
    try:
        with torch.inference_mode():
            extractor.discover(to_device(named_batch(4, seed=1), "cpu", extractor.dtype))
            h, z, layers = extractor(to_device(batch, "cpu", extractor.dtype))
    finally:
        extractor.close()
    assert extractor.classifier == "fc" and extractor.feature_dim == em.P and extractor.num_classes == em.C
    # the model's own forward, its classifier's input caught by a hand-placed pre-hook
    seen = {}
    handle = m.fc.register_forward_pre_hook(lambda _m, args: seen.__setitem__("h", args[0].detach().clone()))
    try:
        with torch.no_grad():
            logits = m(**batch)
    finally:
        handle.remove()
    assert torch.equal(h, seen["h"]) and torch.equal(z, logits)
    assert torch.equal(layers["proj"], h)  # proj's output is the classifier's input
    h_ref, z_ref = by_hand(m, batch)
    np.testing.assert_allclose(h.double().numpy(), h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.double().numpy(), z_ref, rtol=1e-5, atol=1e-6)


def test_a_model_that_rejects_the_named_inputs_names_them():
    m = model("MaskedTokens")
    wrong = {"input_ids": torch.zeros(2, em.SEQ, dtype=torch.long), "token_type_ids": torch.zeros(2, em.SEQ, dtype=torch.long)}
    with pytest.raises(ForwardFailed) as info:
        EagerExtractor(m).discover(wrong)
    message = str(info.value)
    assert "fails on the first batch (inputs input_ids (2, 6) int64, token_type_ids (2, 6) int64)" in message
    assert "TypeError" in message and "token_type_ids" in message


class NamedSource:
    """A data source whose batches are named tensors (what a tokenised text dataset gives)."""

    split, text, description, class_names = "train", "tokens", "named tensors (test)", None

    def __init__(self, inputs: dict[str, torch.Tensor], labels: np.ndarray):
        self.inputs, self.labels = inputs, labels
        self.num_samples = len(labels)

    def label_range(self):
        return int(self.labels.min()), int(self.labels.max())

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return {name: t[start:stop] for name, t in self.inputs.items()}

    def head(self, k: int):
        return self.rows(0, k)

    def batches(self, batch_size, num_workers=0, pin_memory=False, start=0, stop=None):
        stop = self.num_samples if stop is None else stop
        for first in range(start, stop, batch_size):
            last = min(stop, first + batch_size)
            yield BatchOut(self.rows(first, last), self.labels[first:last], np.arange(first, last, dtype=np.int64))


def test_a_source_of_named_inputs_extracts_end_to_end(tmp_path, monkeypatch):
    import ncli.extract.job
    from ncli.extract.api import extract

    m = model("MaskedTokens")
    batch = named_batch(23, seed=2)
    labels = (np.arange(23) % em.C).astype(np.int64)
    source = NamedSource(batch, labels)
    monkeypatch.setattr(ncli.extract.job, "open_sources", lambda items, **kw: [source])
    ckpt = tmp_path / "tokens.pt"
    torch.save(m.state_dict(), ckpt)
    out = tmp_path / "out.h5"
    extract(ckpt, out, ["tokens"], arch=arch("MaskedTokens"), batch_size=5, device="cpu", progress=False)
    stored = read(out)
    h_ref, z_ref = by_hand(m, batch)
    np.testing.assert_allclose(stored["features"], h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored["logits"], z_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stored["labels"], labels)
    np.testing.assert_array_equal(stored["index"], np.arange(23))
    np.testing.assert_array_equal(stored["W"], m.fc.weight.detach().numpy())
    assert stored["attrs"]["feature_layer"] == "fc" and float(stored["attrs"]["max_reconstruction_error"]) < 1e-5
