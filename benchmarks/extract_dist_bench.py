"""``ncli extract`` in one process vs ``torchrun --nproc_per_node 2`` (issue 6, item 4).

Every configuration runs as a fresh command, as a user would run it, so the wall times include
starting Python and importing torch (once per process, and once more for torchrun's own agent):

    1 proc, 1 thread    OMP_NUM_THREADS=1 ncli extract ...
    1 proc, 2 threads   OMP_NUM_THREADS=2 ncli extract ...
    torchrun 2 x 1      OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m ncli extract ...

Printed: best wall time of --repeats runs, the ratio to "1 proc, 1 thread", ncli's own
samples/s from its summary line (without process start and import), the peak RSS (VmHWM) of
the largest process and the sum of every process's peak RSS (torchrun: its agent and the two
workers; an upper bound of the simultaneous total, and shared library pages count once per
process). The torchrun file is checked to equal the single-process one (np.array_equal on
every dataset).

    python benchmarks/extract_dist_bench.py                    # cnn and mlp, 2 repeats (about 2 min on 2 cores)
    python benchmarks/extract_dist_bench.py --workload cnn --n 16384 --repeats 3

Workloads (from extract_bench.py): ``cnn`` 3x32x32 inputs, three conv blocks, p = 128, batch
128: the compute is the model's; ``mlp`` 64 -> 512 -> 512 -> 32 -> 10, batch 1024: little
compute per sample, so I/O and the assembly copy show.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_N = {"cnn": 8192, "mlp": 262144}


def _hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process, in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict) -> tuple[float, int, int, str]:
    """(wall s, peak RSS of the largest process, sum of the processes' peak RSS, stderr).

    Peaks are each process's VmHWM (the kernel's high-water mark of its RSS since exec),
    read every 20 ms for every process of the tree while it lives. (wait4's ru_maxrss would
    count the benchmark's own image, which the child carries between fork and exec.)"""
    import psutil

    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(p.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                pids = [p.pid] + [q.pid for q in root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for pid in pids:
                peaks[pid] = max(peaks.get(pid, 0), _hwm(pid))
            done.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    err = p.stderr.read()
    p.wait()
    wall = time.perf_counter() - t
    done.set()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return wall, max(peaks.values(), default=0), sum(peaks.values()), err


def _rate(stderr: str) -> float:
    """ncli's own samples/s from its summary line (excludes process start and torch import;
    under torchrun it spans rank 0's setup, extraction, waiting for the other rank and the
    assembly)."""
    m = re.search(r"wrote .*?([\d,]+) samples/s", stderr)
    return float(m.group(1).replace(",", "")) if m else float("nan")


def same_file(a: Path, b: Path) -> bool:
    import h5py
    import numpy as np

    def load(p):
        out = {}
        with h5py.File(p, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
        return out

    x, y = load(a), load(b)
    return sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["cnn", "mlp"], nargs="*", default=["cnn", "mlp"])
    ap.add_argument("--n", type=int, default=None, help="samples (default: 8192 cnn, 262144 mlp)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved (best reported)")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    import torch

    import extract_bench as eb

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"best of {args.repeats}; wall times include process start and torch import")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for workload in args.workload:
            n = args.n or DEFAULT_N[workload]
            bs = eb.WORKLOADS[workload][3]
            _, ckpt, data = eb.make_inputs(tmp, workload, n)
            arch = f"{HERE / 'extract_bench.py'}:{eb.WORKLOADS[workload][0].__name__}"
            common = ["extract", str(ckpt), "--arch", arch, "--data", f"train={data}", "-b", str(bs), "--device", "cpu",
                      "--force"]
            configs = [
                ("1 proc, 1 thread", 1, [sys.executable, "-m", "ncli"], tmp / "one1.h5"),
                ("1 proc, 2 threads", 2, [sys.executable, "-m", "ncli"], tmp / "one2.h5"),
                ("torchrun 2 procs x 1 thread", 1, torchrun + ["-m", "ncli"], tmp / "dist.h5"),
            ]
            results: dict[str, list] = {c[0]: [] for c in configs}
            for _ in range(args.repeats):
                for label, threads, prefix, out in configs:
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                               OPENBLAS_NUM_THREADS=str(threads))
                    env.pop("WORLD_SIZE", None)
                    results[label].append(measure(prefix + common + ["-o", str(out)], env))
            base = min(r[0] for r in results[configs[0][0]])
            size = (tmp / "dist.h5").stat().st_size
            print(f"\n{workload}: N = {n}, batch {bs}, output {size / 2**20:.1f} MiB")
            print(f"  {'configuration':28s} {'wall s':>7s} {'vs 1x1':>7s} {'ncli samples/s':>15s} {'peak RSS/proc':>14s} {'sum of peaks':>13s}")
            for label, _, _, _ in configs:
                wall = min(r[0] for r in results[label])
                rss = max(r[1] for r in results[label])
                tot = max(r[2] for r in results[label])
                rate = max(_rate(r[3]) for r in results[label])
                print(f"  {label:28s} {wall:7.2f} {base / wall:6.2f}x {rate:15,.0f} {rss / 2**20:10.0f} MiB "
                      f"{tot / 2**20:9.0f} MiB")
            print(f"  torchrun file equals the single-process file: {same_file(tmp / 'one1.h5', tmp / 'dist.h5')}")


if __name__ == "__main__":
    main()
