"""The accumulator API's cost in a training loop, and ``ncli extract --stats-only`` against a
bare inference loop (issue 13; targets: ≤ 5 % of the forward pass per batch, ≥ 0.9×).

    python benchmarks/accumulator_bench.py                    # both parts, 1 and 2 threads
    python benchmarks/accumulator_bench.py --part loop --threads 1 --classes 10 100

Part ``loop``: the small CNN of extract_bench.py (3×32×32 inputs, p = 128, batch 128) trained
for one epoch with ``ncli.capture`` on it; each batch's forward pass, ``acc.update`` (pass 1)
and the rest of the step (backward, optimizer) are timed one by one (wall time, and the
process's CPU time, which other jobs on a shared machine disturb less), and then an eval epoch
times the forward pass (no_grad) and ``acc.evaluate`` (pass 2). Printed: the accumulator's
time as a fraction of the forward passes' time (medians over the runs). The hooks' own cost
is measured apart: a toy model's forward call with and without ``capture``.

Part ``extract``: the cnn and mlp workloads of extract_bench.py; ``extract(stats_only=True)``
(the whole call: setup, two passes over the data, the statistics file) against a bare
``inference_mode`` loop over the same HDF5 batches, run twice (the same forward passes the
statistics need: pass 1 and pass 2); the ratio to one bare pass is printed beside it, and
the ratio of the processes' CPU time (bare / ncli: the work done, less sensitive than wall time
to other jobs on a shared machine; the accumulator's thread counts in it).
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


class Clock:
    """Wall time and the process's CPU time (all its threads) of each timed section: on a
    shared machine the CPU time still says how much work a section did."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._at = (time.perf_counter(), time.process_time())

    def lap(self, name: str | None) -> None:
        now = (time.perf_counter(), time.process_time())
        if name is not None:
            self.wall[name] = self.wall.get(name, 0.0) + now[0] - self._at[0]
            self.cpu[name] = self.cpu.get(name, 0.0) + now[1] - self._at[1]
        self._at = now


def training_epoch(model, x, y, batch_size: int, num_classes: int, cap=None) -> Clock:
    """One training epoch (pass 1 in it when a capture ``cap`` is on the model), then one eval
    epoch (pass 2)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    accumulate = cap is not None
    acc = ncli.Accumulator(num_classes) if accumulate else None
    clock = Clock()
    model.train()
    for s in range(0, len(y), batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        clock.lap(None)
        logits = model(xb)
        clock.lap("forward")
        if accumulate:
            acc.update(cap.features, yb)
            clock.lap("update")
        optimizer.zero_grad()
        F.cross_entropy(logits, yb).backward()
        optimizer.step()
        clock.lap("step")
    model.eval()
    if accumulate:
        acc.set_classifier(cap.weight, cap.bias)
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            clock.lap(None)
            model(xb)
            clock.lap("eval_forward")
            if accumulate:
                acc.evaluate(cap.features, yb)
                clock.lap("evaluate")
    if accumulate:
        acc.measure()
    return clock


def loop_part(threads_list, classes_list, n: int, batch_size: int, repeats: int) -> None:
    print("\n== the accumulator in a training loop (small CNN, p = 128): share of the forward pass, wall [CPU] ==")
    for num_classes in classes_list:
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.normal(size=(n, 3, 32, 32)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, num_classes, size=n))
        for threads in threads_list:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model, bare = BenchCNN(num_classes), BenchCNN(num_classes)  # the same weights, hooks on one
            bare.load_state_dict(model.state_dict())
            cap = ncli.capture(model)
            training_epoch(model, x[:512], y[:512], batch_size, num_classes, cap)  # warm-up; finds the classifier
            training_epoch(bare, x[:512], y[:512], batch_size, num_classes)
            with_acc, without = [], []
            for _ in range(repeats):  # interleaved
                with_acc.append(training_epoch(model, x, y, batch_size, num_classes, cap))
                without.append(training_epoch(bare, x, y, batch_size, num_classes))
            cap.close()

            def share(part: str, of: str, kind: str) -> float:
                return statistics.median(getattr(c, kind)[part] / getattr(c, kind)[of] for c in with_acc)

            per_batch = -(-n // batch_size)
            f_ms = 1e3 * min(c.wall["forward"] for c in with_acc) / per_batch
            print(
                f"C={num_classes:4d} threads={threads}: forward {f_ms:6.2f} ms/batch (train, best); update "
                f"{100 * share('update', 'forward', 'wall'):5.2f} % [{100 * share('update', 'forward', 'cpu'):5.2f} %] of it; "
                f"evaluate {100 * share('evaluate', 'eval_forward', 'wall'):5.2f} % "
                f"[{100 * share('evaluate', 'eval_forward', 'cpu'):5.2f} %] of the eval forward (medians)"
            )
    print(f"capture's hooks: {hook_cost() * 1e6:.1f} µs per forward call (a 2-layer toy model, with vs without)")


def hook_cost(calls: int = 20000, rounds: int = 5) -> float:
    """Seconds the capture hooks add to one forward call: a toy model whose forward costs
    almost nothing, called with and without them (interleaved rounds, the best of each)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    x = torch.randn(2, 8)
    best = {True: float("inf"), False: float("inf")}
    with torch.no_grad():
        for _ in range(rounds):
            for hooked in (True, False):
                cap = ncli.capture(model) if hooked else None
                model(x)
                t = time.perf_counter()
                for _ in range(calls):
                    model(x)
                best[hooked] = min(best[hooked], (time.perf_counter() - t) / calls)
                if cap is not None:
                    cap.close()
    return best[True] - best[False]


def stats_only(ckpt: Path, data: Path, out: Path, workload: str, batch_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one extract(stats_only=True) call."""
    from ncli.extract.api import extract

    arch = f"{(Path(__file__).resolve().parent / 'extract_bench.py')}:{WORKLOADS[workload][0].__name__}"
    t, cpu = time.perf_counter(), time.process_time()
    extract(ckpt, out, [f"train={data}"], arch=arch, batch_size=batch_size, device="cpu", force=True, progress=False,
            stats_only=True)
    return time.perf_counter() - t, time.process_time() - cpu


def bare_two_passes(model, data: Path, batch_size: int) -> tuple[float, float]:
    t, cpu = time.perf_counter(), time.process_time()
    bare_loop(model, data, batch_size)
    bare_loop(model, data, batch_size)
    return time.perf_counter() - t, time.process_time() - cpu


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
                    bare.append(bare_two_passes(model, data, bs))
                    ours.append(stats_only(ckpt, data, tmp / "out.stats.h5", workload, bs))
                b, o = min(t for t, _ in bare), min(t for t, _ in ours)
                bm, om = statistics.median(t for t, _ in bare), statistics.median(t for t, _ in ours)
                cpu = statistics.median(c for _, c in bare) / statistics.median(c for _, c in ours)
                size = (tmp / "out.stats.h5").stat().st_size
                print(
                    f"{workload:4s} N={n:6d} batch={bs:5d} threads={threads}:  bare 2 passes {2 * n / b:9,.0f} ({2 * n / bm:9,.0f}) "
                    f"rows/s   --stats-only {2 * n / o:9,.0f} ({2 * n / om:9,.0f}) rows/s   ratio {b / o:.3f} ({bm / om:.3f}); "
                    f"CPU time ratio {cpu:.3f}; vs one bare pass {b / 2 / o:.3f}; file {size:,} bytes"
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
