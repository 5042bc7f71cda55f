"""The accumulator API's cost in a training loop, and ``ncli extract --stats-only`` against a
bare inference loop (issue 13; targets: ≤ 5 % of the forward pass per batch, ≥ 0.9×).

    python benchmarks/accumulator_bench.py                    # both parts, 1 and 2 threads
    python benchmarks/accumulator_bench.py --part loop --threads 1 --classes 10 100

Part ``loop``: the small CNN of extract_bench.py (3×32×32 inputs, p = 128, batch 128) trained
for one epoch with ``ncli.capture`` on it; each batch's forward pass, ``acc.update`` (pass 1)
and the rest of the step (backward, optimizer) are timed one by one with perf_counter, and
then an eval epoch times the forward pass (no_grad) and ``acc.evaluate`` (pass 2). Printed:
the accumulator's time as a fraction of the forward passes' time. The hooks' own cost is
measured too: forward passes with and without ``capture`` (interleaved epochs).

Part ``extract``: the cnn and mlp workloads of extract_bench.py; ``extract(stats_only=True)``
(the whole call: setup, two passes over the data, the statistics file) against a bare
``inference_mode`` loop over the same HDF5 batches, run twice (the same forward passes the
statistics need: pass 1 and pass 2); the ratio to one bare pass is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ncli
from extract_bench import WORKLOADS, BenchCNN, bare_loop, make_inputs


def training_epoch(model, x, y, batch_size: int, num_classes: int, accumulate: bool) -> dict:
    """One training epoch (pass 1 in it when ``accumulate``), then one eval epoch (pass 2)."""
    times = {"forward": 0.0, "update": 0.0, "step": 0.0, "eval_forward": 0.0, "evaluate": 0.0}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    cap = ncli.capture(model) if accumulate else None
    acc = ncli.Accumulator(num_classes) if accumulate else None
    clock = time.perf_counter
    model.train()
    for s in range(0, len(y), batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        t0 = clock()
        logits = model(xb)
        t1 = clock()
        if accumulate:
            acc.update(cap.features, yb)
        t2 = clock()
        optimizer.zero_grad()
        F.cross_entropy(logits, yb).backward()
        optimizer.step()
        t3 = clock()
        times["forward"] += t1 - t0
        times["update"] += t2 - t1
        times["step"] += t3 - t2
    model.eval()
    if accumulate:
        acc.set_classifier(cap.weight, cap.bias)
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            t0 = clock()
            model(xb)
            t1 = clock()
            if accumulate:
                acc.evaluate(cap.features, yb)
            t2 = clock()
            times["eval_forward"] += t1 - t0
            times["evaluate"] += t2 - t1
    if accumulate:
        acc.measure()
        cap.close()
    return times


def loop_part(threads_list, classes_list, n: int, batch_size: int, repeats: int) -> None:
    print("\n== the accumulator in a training loop (small CNN, p = 128) ==")
    for num_classes in classes_list:
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.normal(size=(n, 3, 32, 32)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, num_classes, size=n))
        for threads in threads_list:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = BenchCNN(num_classes)
            training_epoch(model, x[:512], y[:512], batch_size, num_classes, True)  # warm-up
            with_acc, without = [], []
            for _ in range(repeats):  # interleaved
                with_acc.append(training_epoch(model, x, y, batch_size, num_classes, True))
                without.append(training_epoch(model, x, y, batch_size, num_classes, False))
            update = [t["update"] / t["forward"] for t in with_acc]
            evaluate = [t["evaluate"] / t["eval_forward"] for t in with_acc]
            hooks = min(t["forward"] for t in with_acc) / min(t["forward"] for t in without) - 1
            per_batch = -(-n // batch_size)
            f_ms = 1e3 * min(t["forward"] for t in with_acc) / per_batch
            print(
                f"C={num_classes:4d} threads={threads}: forward {f_ms:6.2f} ms/batch (train), "
                f"update {100 * min(update):5.2f} % ({100 * statistics.median(update):5.2f} %) of it, "
                f"evaluate {100 * min(evaluate):5.2f} % ({100 * statistics.median(evaluate):5.2f} %) of the eval forward; "
                f"capture hooks {100 * hooks:+.1f} % on the forward"
            )


def stats_only(ckpt: Path, data: Path, out: Path, workload: str, batch_size: int) -> float:
    from ncli.extract.api import extract

    arch = f"{(Path(__file__).resolve().parent / 'extract_bench.py')}:{WORKLOADS[workload][0].__name__}"
    t = time.perf_counter()
    extract(ckpt, out, [f"train={data}"], arch=arch, batch_size=batch_size, device="cpu", force=True, progress=False,
            stats_only=True)
    return time.perf_counter() - t


def extract_part(threads_list, workloads, repeats: int) -> None:
    print("\n== ncli extract --stats-only vs a bare inference loop (two passes: the same forward passes) ==")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for workload in workloads:
            _, _, n, bs = WORKLOADS[workload]
            model, ckpt, data = make_inputs(tmp, workload, n)
            for threads in threads_list:
                torch.set_num_threads(threads)
                bare_loop(model, data, bs)  # warm-up
                bare, ours = [], []
                for _ in range(repeats):
                    bare.append(bare_loop(model, data, bs) + bare_loop(model, data, bs))
                    ours.append(stats_only(ckpt, data, tmp / "out.stats.h5", workload, bs))
                b, o = min(bare), min(ours)
                bm, om = statistics.median(bare), statistics.median(ours)
                size = (tmp / "out.stats.h5").stat().st_size
                print(
                    f"{workload:4s} N={n:6d} batch={bs:5d} threads={threads}:  bare 2 passes {2 * n / b:9,.0f} ({2 * n / bm:9,.0f}) "
                    f"rows/s   --stats-only {2 * n / o:9,.0f} ({2 * n / om:9,.0f}) rows/s   ratio {b / o:.3f} ({bm / om:.3f}); "
                    f"vs one bare pass {b / 2 / o:.3f}; file {size:,} bytes"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["loop", "extract"], nargs="*", default=["loop", "extract"])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--classes", type=int, nargs="*", default=[10, 100], help="C of the training-loop part")
    ap.add_argument("--n", type=int, default=4096, help="samples of the training-loop part")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), nargs="*", default=sorted(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved (best and median reported)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"{args.repeats} interleaved runs each: best (median)")
    if "loop" in args.part:
        loop_part(args.threads, args.classes, args.n, args.batch_size, args.repeats)
    if "extract" in args.part:
        extract_part(args.threads, args.workload, args.repeats)


if __name__ == "__main__":
    main()
