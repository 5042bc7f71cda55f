"""Issue 12, Hugging Face (the [hf] extra; skipped without transformers): tiny models built here
from configs in code and saved with save_pretrained (nothing is downloaded), extracted from
their folders without --arch, each checked against the model's own forward pass with a hook
on its final linear layer, and measured.

  GPT-2 (causal LM)   one row per predicted token: the lm_head input at t, the token at t+1
  BERT                a sequence classifier fed input_ids + attention_mask by name
  ViT                 transformers 5 renames its keys between file and module; uint8 NHWC arrays
  folders             sharded safetensors, pytorch_model.bin, missing tensors, code in the folder
  .pt2               a ViT program whose output is an ImageClassifierOutput
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from extract_util import assert_close, invoke, ok, read

try:
    from reference import assert_record_matches
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches

pytestmark = pytest.mark.hf
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, LENGTH = 97, 12


def save(model, folder: Path) -> Path:
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    return folder


def hooked(model, module, **inputs):
    """The model's own forward; the input and output of ``module`` caught by a hook."""
    got = {}
    handle = module.register_forward_hook(lambda _m, args, out: got.update(h=args[0].detach().clone(), z=out.detach().clone()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return got["h"], got["z"]


def measure(path: Path) -> dict:
    return json.loads(ok(invoke("measure", path, "--json")).stdout)


# ---------------------------------------------------------------------------------------
# GPT-2: token-level rows
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, save(model, tmp_path_factory.mktemp("gpt2") / "gpt2")


def token_data(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """22 sequences, two right-padded; every vocabulary entry is the next token at least twice
    (so that every class has train rows)."""
    rng = np.random.default_rng(0)
    mask = np.ones((22, LENGTH), np.int64)
    mask[20, 7:] = 0
    mask[21, 4:] = 0
    targets = [(s, t + 1) for s in range(22) for t in range(LENGTH - 1) if mask[s, t] and mask[s, t + 1]]
    ids = rng.integers(0, VOCAB, (22, LENGTH))
    labels = rng.permutation(np.resize(np.arange(VOCAB), len(targets)))
    for (s, t), token in zip(targets, labels):
        ids[s, t] = token
    path = folder / "tokens.npz"
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path, ids, mask


def test_gpt2_next_token_rows(gpt2, tmp_path):
    model, folder = gpt2
    data, ids, mask = token_data(tmp_path)
    out = tmp_path / "lm.h5"
    ok(invoke("extract", folder, "--data", data, "--layer", "transformer.h.0", "-o", out, "-b", "5", "-q"))
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    h, z = hooked(model, model.lm_head, input_ids=t_ids, attention_mask=t_mask)
    layer = {}
    handle = model.transformer.h[0].register_forward_hook(lambda _m, a, o: layer.setdefault("out", (o[0] if isinstance(o, tuple) else o).detach()))
    with torch.no_grad():
        model(input_ids=t_ids, attention_mask=t_mask)
    handle.remove()
    keep = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    s, t = np.nonzero(keep)
    d = read(out)
    assert d["features"].shape == (keep.sum(), 32) and "logits" not in d  # C = 97 floats per token are not stored
    assert_close(d["features"], h[s, t].numpy())
    np.testing.assert_array_equal(d["labels"], ids[s, t + 1])
    np.testing.assert_array_equal(d["index"], s * LENGTH + t)
    assert_close(d["layers"]["transformer.h.0"], layer["out"][s, t].numpy())
    np.testing.assert_array_equal(d["W"], model.lm_head.weight.detach().numpy())  # tied to wte
    assert d["b"] is None and d["attrs"]["feature_layer"] == "lm_head" and d["attrs"]["extractor"] == "causal-lm"
    assert d["attrs"]["hf_architecture"] == "GPT2LMHeadModel" and d["attrs"]["checkpoint_form"] == "huggingface"
    assert float(d["attrs"]["max_reconstruction_error"]) < 1e-5
    record = measure(out)
    predicted = z[s, t].argmax(-1).numpy()
    assert record["num_classes"] == VOCAB and record["splits"]["train"]["accuracy"] == pytest.approx(np.mean(predicted == ids[s, t + 1]))


@pytest.mark.parametrize("selection", [[], ["--min-per-class", "3"]], ids=["every-token", "min-per-class"])
def test_gpt2_stats_only_equals_its_token_level_feature_file(gpt2, tmp_path, selection):
    """--stats-only feeds the accumulator the same token rows as the feature file (the
    output layer's input at t, labelled with the token at t + 1); with --min-per-class 3 the
    35 tokens that are the next token 3 times are measured."""
    _, folder = gpt2
    data, _, _ = token_data(tmp_path)
    args = ["--data", f"train={data}", "--data", f"test={data}", "-b", "5", "-q"]
    features, stats = tmp_path / "lm.h5", tmp_path / "lm.stats.h5"
    ok(invoke("extract", folder, *args, "-o", features))
    ok(invoke("extract", folder, *args, "-o", stats, "--stats-only", *selection))
    got = json.loads(ok(invoke("measure", stats, "--json", "--per-class", *selection)).stdout)
    want = json.loads(ok(invoke("measure", features, "--json", "--per-class", *selection)).stdout)
    assert got["classes_measured"] == (35 if selection else VOCAB)
    assert got["splits"]["train"]["num_samples"] == (35 * 3 if selection else 229)  # token rows, not 22 sequences
    assert got["splits"]["train"]["num_samples"] == want["splits"]["train"]["num_samples"]
    assert_record_matches(got, want, rtol=1e-9, per_class=True)
    assert features.stat().st_size > stats.stat().st_size


def test_inspect_a_folder(gpt2):
    _, folder = gpt2
    shown = json.loads(ok(invoke("inspect", folder, "--json")).stdout)
    assert shown["form"] == "huggingface" and shown["chosen"] == "lm_head" and shown["num_classes"] == VOCAB
    assert shown["hf_architecture"] == "GPT2LMHeadModel" and "one row per predicted token" in shown["note"]


# ---------------------------------------------------------------------------------------
# BERT: named inputs with an attention mask
# ---------------------------------------------------------------------------------------


def bert(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3, max_position_embeddings=32)
    model = transformers.BertForSequenceClassification(config).eval()
    return model, save(model, tmp_path / "bert")


def bert_data(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 30), ("test", 13)):
        ids = rng.integers(1, VOCAB, (n, LENGTH))
        lengths = rng.integers(3, LENGTH + 1, n)
        mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int64)
        arrays.update({f"input_ids_{split}": ids * mask, f"attention_mask_{split}": mask, f"labels_{split}": np.arange(n) % 3})
    np.savez(tmp_path / "sst.npz", **arrays)
    return tmp_path / "sst.npz"


def test_bert_sequence_classifier_with_an_attention_mask(tmp_path):
    model, folder = bert(tmp_path)
    data = bert_data(tmp_path)
    out = tmp_path / "bert.h5"
    ok(invoke("extract", folder, "--data", data, "--layer", "bert.encoder.layer.1", "--pool", "mean", "-o", out, "-b", "8", "-q"))
    with np.load(data) as z:
        for split in ("train", "test"):
            ids, mask = torch.from_numpy(z[f"input_ids_{split}"]), torch.from_numpy(z[f"attention_mask_{split}"])
            h, logits = hooked(model, model.classifier, input_ids=ids, attention_mask=mask)
            tokens = {}
            handle = model.bert.encoder.layer[1].register_forward_hook(lambda _m, a, o: tokens.setdefault("t", (o[0] if isinstance(o, tuple) else o).detach()))
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            handle.remove()
            d = read(out, split)
            assert_close(d["features"], h.numpy())
            assert_close(d["logits"], logits.numpy())
            np.testing.assert_array_equal(d["labels"], z[f"labels_{split}"])
            weights = mask[..., None].float()
            assert_close(d["layers"]["bert.encoder.layer.1"], ((tokens["t"] * weights).sum(1) / weights.sum(1)).numpy(), rel=1e-5)
            # the mask matters: without it the features differ
            h_unmasked, _ = hooked(model, model.classifier, input_ids=ids)
            assert (h_unmasked - h).abs().max() > 1e-3
    with h5py.File(out) as f:
        assert f["train/layers/bert.encoder.layer.1"].attrs["pooled"] == "tokens: mean over the attention mask"
    np.testing.assert_array_equal(read(out)["W"], model.classifier.weight.detach().numpy())
    record = measure(out)
    assert record["splits"]["test"]["accuracy"] == pytest.approx(np.mean(read(out, "test")["logits"].argmax(1) == read(out, "test")["labels"]))


def test_sharded_safetensors_and_pytorch_model_bin(tmp_path):
    model, _ = bert(tmp_path)
    data = bert_data(tmp_path)
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((sharded / "config.json").read_text())
    torch.save(model.state_dict(), binary / "pytorch_model.bin")  # read with weights_only=True
    ids, mask = (torch.from_numpy(np.load(data)[k]) for k in ("input_ids_train", "attention_mask_train"))
    h, _ = hooked(model, model.classifier, input_ids=ids, attention_mask=mask)
    for folder in (sharded, binary):
        out = tmp_path / f"{folder.name}.h5"
        ok(invoke("extract", folder, "--data", f"train={data}", "-o", out, "-q"))
        assert_close(read(out)["features"], h.numpy())


def test_a_folder_missing_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = bert(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in weights if "classifier" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / "model.safetensors"))
    r = invoke("extract", folder, "--data", bert_data(tmp_path), "-o", tmp_path / "o.h5")
    assert r.exit_code == 3 and "missing from the weights" in r.stderr and "classifier" in r.stderr, r.stderr


def test_code_in_the_folder_needs_trust(tmp_path):
    """A config whose model class is the folder's own code (auto_map) is refused without
    --trust-checkpoint, and the code is not run."""
    _, folder = bert(tmp_path)
    marker = tmp_path / "ran"
    (folder / "modeling_mine.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["MineForSequenceClassification"],
                  auto_map={"AutoModelForSequenceClassification": "modeling_mine.MineForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    r = invoke("extract", folder, "--data", bert_data(tmp_path), "-o", tmp_path / "o.h5")
    assert r.exit_code == 4 and "modeling_mine.py" in r.stderr and "--trust-checkpoint" in r.stderr, r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# ViT: transformers 5 key renaming, image arrays, .pt2
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, num_labels=4)
    model = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("vit")
    return model, save(model, folder / "vit"), folder


def test_vit_folder_with_renamed_keys_on_uint8_arrays(vit, tmp_path):
    from safetensors import safe_open

    model, folder, _ = vit
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert stored != set(model.state_dict())  # a plain state-dict load would not fit: from_pretrained maps them
    x = np.random.default_rng(0).integers(0, 256, (18, 16, 16, 3), dtype=np.uint8)  # CIFAR-style NHWC
    data = tmp_path / "images.npz"
    np.savez(data, x=x, y=np.arange(18) % 4)
    out = tmp_path / "vit.h5"
    first = next(n for n, _ in model.named_modules() if n.endswith("layers.0") or n.endswith("layer.0"))
    ok(invoke("extract", folder, "--data", data, "--layer", first, "--pool", "cls", "-o", out, "-b", "7", "-q"))
    pixels = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    h, logits = hooked(model, model.classifier, pixel_values=pixels)
    tokens = {}
    handle = dict(model.named_modules())[first].register_forward_hook(lambda _m, a, o: tokens.setdefault("t", (o[0] if isinstance(o, tuple) else o).detach()))
    with torch.no_grad():
        model(pixel_values=pixels)
    handle.remove()
    d = read(out)
    assert_close(d["features"], h.numpy())
    assert_close(d["logits"], logits.numpy())
    assert d["layers"][first].shape == (18, 32)  # a token (N, D), not (N, L) pooled over D
    assert_close(d["layers"][first], tokens["t"][:, 0].numpy())
    assert measure(out)["splits"]["train"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1).numpy() == np.arange(18) % 4))


def test_pt2_program_with_transformers_outputs(vit, tmp_path):
    """The program's output is an ImageClassifierOutput: loading it in a fresh process (where
    nothing imported transformers) works, without a logged traceback."""
    model, _, _ = vit
    program = tmp_path / "vit.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 16, 16),)), str(program))
    x = np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)
    data = tmp_path / "x.npz"
    np.savez(data, x=x, y=np.arange(6) % 4)
    out = tmp_path / "p.h5"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, "-m", "ncli", "extract", str(program), "--data", str(data), "-o", str(out), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert all(line.startswith("ncli: note: ") for line in run.stderr.splitlines()), run.stderr  # no logged traceback
    h, logits = hooked(model, model.classifier, pixel_values=torch.from_numpy(x))
    d = read(out)
    assert_close(d["features"], h.numpy(), rel=1e-5)
    assert_close(d["logits"], logits.numpy(), rel=1e-5)
