"""Distributed extraction (issue 6, item 3) and the device choice (item 2, the part that runs
without a GPU).

The torchrun tests start ``python -m torch.distributed.run --standalone --nproc_per_node 2``
(gloo on CPU; --standalone picks a free port) as a subprocess, about 6 s each on a 2-core
machine: one torch import per process."""

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

from extract_util import arch, invoke, make_data, model, ok
from ncli.errors import EnvironmentProblem
from ncli.extract.distributed import world_from_env
from ncli.extract.shards import share

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "fixtures" / "checkpoints" / "mlp_epoch0300.pt"
MLP = f"{ROOT / 'fixtures' / 'models.py'}:MLP"
DIGITS = ROOT / "fixtures" / "digits.npz"
FAULT = Path(__file__).resolve().parent / "dist_fault.py"


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".ncli-tmp-")]


def _torchrun(*args, cwd: Path, script: list | None = None) -> subprocess.CompletedProcess:
    target = script if script is not None else ["-m", "ncli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _ncli_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("ncli: ")]


def _datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return out, attrs


# -- the partition ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n,bs", [(1, 1), (37, 16), (21, 32), (1200, 256), (597, 256), (100, 7), (5, 10)])
def test_shares_are_contiguous_whole_batches_covering_every_row_once(n, bs, k):
    parts = [share(n, bs, r, k) for r in range(k)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    for (a0, a1), (b0, b1) in zip(parts, parts[1:]):
        assert a1 == b0  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in parts]
    assert all(lo % bs == 0 for lo, hi in parts if hi > lo)  # whole batches of the single-process run
    nb = -(-n // bs)
    counts = [-(-s // bs) for s in sizes]
    assert sum(counts) == nb and max(counts) - min(counts) <= 1


def test_world_from_env():
    assert world_from_env({}) is None
    assert world_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # torchrun --nproc_per_node 1
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    w = world_from_env(env)
    assert (w.rank, w.world_size, w.local_rank) == (3, 4, 1)
    with pytest.raises(EnvironmentProblem, match="torchrun"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "0"})


# -- the device choice (the CUDA path itself cannot run here) ------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_one_line_naming_the_alternatives(tmp_path):
    data = make_data(tmp_path)
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    out = tmp_path / "o.h5"
    r = invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", out, "--device", "cuda")
    assert r.exit_code == 5, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ncli: error: --device cuda: CUDA is not available")
    assert "--device cpu" in lines[0] and "--device auto" in lines[0]
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_auto_says_which(tmp_path):
    data = make_data(tmp_path)
    ck = tmp_path / "net.pt"
    torch.save(model("Net").state_dict(), ck)
    r = ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "a.h5"))
    mps = getattr(torch.backends, "mps", None)
    want = "mps" if mps is not None and mps.is_available() else "cpu"
    assert f"ncli: note: --device auto: using {want}" in r.output
    r = ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "b.h5", "--device", "cpu"))
    assert "--device auto" not in r.output  # said only when ncli chose
    r = ok(invoke("extract", ck, "--arch", arch("Net"), "--data", data, "-o", tmp_path / "c.h5", "-q"))
    assert r.output == ""


def test_writer_thread_waits_for_pending_device_to_host_copies(tmp_path):
    """The CUDA path hands the writer thread a pending copy (an event and pinned buffers);
    the thread waits for it before checking and writing. Plumbing only: no GPU here."""
    from ncli.extract.sink import Sink
    from ncli.features.writer import FeatureWriter

    rng = np.random.default_rng(0)
    C, p, n = 3, 5, 37
    W = rng.normal(size=(C, p))
    H = rng.normal(size=(n, p)).astype(np.float32)
    Z = (H.astype(np.float64) @ W.T).astype(np.float32)
    y = np.arange(n) % C

    class Pending:
        waited = 0

        def __init__(self, a, b):
            self.a, self.b = a, b

        def wait(self):
            Pending.waited += 1
            return {"features": self.a, "logits": self.b, "layers": {"l": self.a * 2}}

    out = tmp_path / "o.h5"
    with FeatureWriter(out, num_classes=C) as w:
        sink = Sink(w, W, None, flush_rows=16)
        sink.start()
        for s in range(0, n, 8):
            sink.put("train", pending=Pending(H[s : s + 8], Z[s : s + 8]), labels=y[s : s + 8], index=np.arange(s, min(n, s + 8)))
        sink.finish()
    assert Pending.waited == 5 and sink.max_err < 1e-5
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["train/features"][...], H) and np.array_equal(f["train/logits"][...], Z)
        assert np.array_equal(f["train/layers/l"][...], H * 2) and np.array_equal(f["train/index"][...], np.arange(n))


# -- torchrun --------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_equal_the_single_process_run(tmp_path):
    # a third split with one batch: rank 0's share of it is empty
    with np.load(DIGITS) as z:
        np.savez(tmp_path / "tiny.npz", x=z["x_test"][:50], y=z["y_test"][:50])
    args = [CKPT, "--arch", MLP, "--data", DIGITS, "--data", f"tiny={tmp_path / 'tiny.npz'}", "--layer", "body.5",
            "-b", "256", "--device", "cpu"]
    single, dist = tmp_path / "single.h5", tmp_path / "dist.h5"
    ok(invoke("extract", *args, "-o", single, "-q"))
    r = _torchrun("extract", *args, "-o", dist, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _ncli_lines(r.stderr)
    assert lines == [ln for ln in lines if "wrote" in ln] and len(lines) == 1, r.stderr  # rank 0 only
    assert f"wrote {dist}: 1847 samples" in lines[0] and "2 torchrun processes" in lines[0]

    a, a_attrs = _datasets(single)
    b, b_attrs = _datasets(dist)
    assert sorted(a) == sorted(b)
    assert {"train/layers/body.5", "tiny/index", "test/logits"} <= set(a)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name  # bitwise: the same batches were computed
    for split, n in (("train", 1200), ("test", 597), ("tiny", 50)):
        assert np.array_equal(b[f"{split}/index"], np.arange(n))
    assert a_attrs["world_size"] == 1 and b_attrs["world_size"] == 2 and "torchrun" in b_attrs["distributed"]
    same = {k for k in a_attrs if k not in ("world_size",)}
    assert {k: a_attrs[k] for k in same} == {k: b_attrs[k] for k in same}  # provenance, max errors
    assert not any(k.startswith("ncli_shard") for k in b_attrs)
    assert not _leftovers(tmp_path)

    def measured(path):
        r = ok(invoke("measure", path, "--json", "--per-class"))
        rec = json.loads(r.stdout)
        rec.pop("file")
        return rec

    assert measured(single) == measured(dist)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["fail", "drop"])
def test_torchrun_a_failed_rank_or_missing_shard_leaves_nothing(tmp_path, fault):
    out = tmp_path / "out.h5"
    r = _torchrun("1:" + fault, "extract", CKPT, "--arch", MLP, "--data", DIGITS, "-b", "256", "--device", "cpu", "-o",
                  out, cwd=tmp_path, script=[str(FAULT)])
    assert r.returncode != 0
    lines = _ncli_lines(r.stderr)
    if fault == "fail":
        # the failing rank says what happened, rank 0 says which rank failed; nothing else
        assert any(ln.startswith("ncli: error: --data train=") and "(simulated)" in ln for ln in lines), r.stderr
        assert any(ln.startswith("ncli: error: rank 1 of 2 failed during extract: --data train=") for ln in lines)
        assert len(lines) == 2, lines
    else:
        assert len(lines) == 1, r.stderr
        assert "the shard of rank 1 of 2 is missing" in lines[0] and "filesystem every node shares" in lines[0]
        assert "nothing written to" in lines[0]
    assert "exitcode  : 3" in r.stderr  # InputError's code on the ranks (torchrun itself exits 1)
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.slow
def test_torchrun_existing_output_is_refused_on_every_rank_before_any_work(tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    r = _torchrun("extract", CKPT, "--arch", MLP, "--data", DIGITS, "--device", "cpu", "-o", out, cwd=tmp_path)
    assert r.returncode != 0
    lines = _ncli_lines(r.stderr)
    assert lines == [f"ncli: error: {out}: already exists; pass --force to replace it"], r.stderr  # said once
    assert "exitcode  : 4" in r.stderr
    assert out.read_bytes() == b"precious" and not _leftovers(tmp_path)


@pytest.mark.slow
def test_torchrun_several_checkpoints_into_a_folder_and_the_share_label(tmp_path):
    checkpoints = [ROOT / "fixtures" / "checkpoints" / f"mlp_epoch{e:04d}.pt" for e in (1, 3)]
    common = ["--arch", MLP, "--data", DIGITS, "--device", "cpu"]
    ok(invoke("extract", *checkpoints, *common, "-o", f"{tmp_path}/single/", "-q"))
    r = _torchrun("extract", *checkpoints, *common, "-o", f"{tmp_path}/dist/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _ncli_lines(r.stderr)
    assert lines.count(f"ncli: note: created the output folder {tmp_path}/dist/") == 1, r.stderr  # rank 0 says it
    assert sum("wrote" in ln for ln in lines) == 2, r.stderr
    # rank 0's bar counts its own share of each split, and says so
    lo, hi = share(1200, 256, 0, 2)  # digits: 1200 train rows, batches of 256 (the default)
    assert "train (rank 0 of 2, its share)" in r.stderr and f"{hi - lo}/{hi - lo}" in r.stderr, r.stderr
    for checkpoint in checkpoints:
        a, _ = _datasets(tmp_path / "single" / f"{checkpoint.stem}.h5")
        b, _ = _datasets(tmp_path / "dist" / f"{checkpoint.stem}.h5")
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not _leftovers(tmp_path / "dist")
