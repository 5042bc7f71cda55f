"""Throughput of ``ncli extract`` against a bare ``torch.inference_mode`` loop over the same
batches, in the same run (issue 3; target: ncli ≥ 0.9× the bare loop).

The bare loop reads each batch from the same HDF5 file, runs the model and does nothing with
the output. "bare + raw writes" also writes what any extractor must store (features, logits,
labels, row indices) as raw bytes into the output's folder: bare / that is about the best
ratio any extractor can reach on the machine. ncli's number is the whole ``extract()`` call:
loading the checkpoint (and its sha256), building the --arch model, classifier discovery,
hooks, copying features, logits and labels to numpy, the reconstruction check, and the
streaming HDF5 writes with temp + rename.

    python benchmarks/extract_bench.py                 # both workloads, 1 and 2 threads
    python benchmarks/extract_bench.py --threads 1 --workload cnn --n 2048

Workloads: ``cnn`` (3×32×32 inputs, three conv blocks, p = 128: the compute is the model's),
``mlp`` (64 → 512 → 512 → 32 → 10 on rows: little compute per sample, so the per-batch
overheads show).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn


class BenchCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 128, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def penultimate(self, x):
        return torch.flatten(self.pool(self.features(x)), 1)


class BenchMLP(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))

    def penultimate(self, x):
        return self.body(x)


WORKLOADS = {"cnn": (BenchCNN, (3, 32, 32), 4096, 128), "mlp": (BenchMLP, (64,), 131072, 1024)}


def make_inputs(folder: Path, workload: str, n: int):
    import h5py
    import numpy as np

    cls, shape, _, _ = WORKLOADS[workload]
    torch.manual_seed(0)
    model = cls().eval()
    ckpt = folder / f"{workload}.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    data = folder / f"{workload}.h5"
    with h5py.File(data, "w") as f:
        f["x"] = rng.normal(size=(n, *shape)).astype(np.float32)
        f["y"] = rng.integers(0, 10, size=n)
    return model, ckpt, data


def bare_loop(model, data: Path, batch_size: int) -> float:
    import h5py

    t = time.perf_counter()
    with h5py.File(data, "r") as f, torch.inference_mode():
        x, n = f["x"], f["x"].shape[0]
        for s in range(0, n, batch_size):
            model(torch.from_numpy(x[s : s + batch_size]))
    return time.perf_counter() - t


def stored_loop(model, data: Path, batch_size: int, out: Path) -> float:
    """The bare loop plus the bytes any extractor must store, written raw (no HDF5) into the
    output's folder: each batch's penultimate features, logits, labels and row indices."""
    import h5py
    import numpy as np

    out.unlink(missing_ok=True)  # as for ncli: a first write, not a replacement
    t = time.perf_counter()
    with h5py.File(data, "r") as f, torch.inference_mode(), open(out, "wb") as sink:
        x, y, n = f["x"], f["y"], f["x"].shape[0]
        for s in range(0, n, batch_size):
            features = model.penultimate(torch.from_numpy(x[s : s + batch_size]))
            logits = model.fc(features)
            labels = y[s : s + batch_size]
            for part in (features.numpy(), logits.numpy(), labels, np.arange(s, s + labels.shape[0])):
                sink.write(part.data)
    return time.perf_counter() - t


def ncli_extract(ckpt: Path, data: Path, out: Path, workload: str, batch_size: int) -> float:
    from ncli.extract.api import extract

    arch = f"{Path(__file__).resolve()}:{WORKLOADS[workload][0].__name__}"
    # the previous run's file is removed untimed: replacing it (--force) would charge this run
    # with freeing its pages, which a first extraction does not pay
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    extract(ckpt, out, [f"train={data}"], arch=arch, batch_size=batch_size, device="cpu", force=True, progress=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), nargs="*", default=sorted(WORKLOADS))
    ap.add_argument("--n", type=int, default=None, help="samples (default: 4096 cnn, 131072 mlp)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 cnn, 1024 mlp")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved (best and median reported)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"{args.repeats} interleaved runs each: best (median)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for workload in args.workload:
            _, _, n_default, bs_default = WORKLOADS[workload]
            n, bs = args.n or n_default, args.batch_size or bs_default
            model, ckpt, data = make_inputs(tmp, workload, n)
            for threads in args.threads:
                torch.set_num_threads(threads)
                bare_loop(model, data, bs)  # warm-up
                bare, stored, ours = [], [], []
                for _ in range(args.repeats):
                    bare.append(bare_loop(model, data, bs))
                    stored.append(stored_loop(model, data, bs, tmp / "raw.bin"))
                    ours.append(ncli_extract(ckpt, data, tmp / "out.h5", workload, bs))
                b, w, o = min(bare), min(stored), min(ours)
                bm, wm, om = statistics.median(bare), statistics.median(stored), statistics.median(ours)
                print(
                    f"{workload:4s} N={n:6d} batch={bs:5d} threads={threads}:  bare {n / b:9,.0f} ({n / bm:9,.0f}) samples/s"
                    f"   bare + raw writes {n / w:9,.0f} ({n / wm:9,.0f}), ratio {b / w:.3f} ({bm / wm:.3f})"
                    f"   ncli extract {n / o:9,.0f} ({n / om:9,.0f}) samples/s   ratio {b / o:.3f} ({bm / om:.3f})"
                    f"   load {os.getloadavg()[0]:.2f}"
                )


if __name__ == "__main__":
    main()
