"""Benchmark `ncli measure` at vocabulary scale against a floor measured in the same run.

Synthetic language-model-like files: C classes (a vocabulary) with Zipf-distributed labels
(P(c) ∝ 1/(c + 1)^s, s = 1.07 by default; every class appears at least once unless
--no-cover), float32 features p = 128 around random class means, a classifier W close to the
centred means, a train split of N rows and a test split of N/10. Then, as separate
processes with the same thread count (OMP/OPENBLAS env and `ncli measure --threads`):

- floor: one streamed read of every split's features and labels, with the float32 products
  of every row against the measured classes' logits and nearest-class-centre scores (one
  GEMM per block of rows against a p × 2C' matrix; blocks on the worker threads, one BLAS
  thread each) — what any exact NC4 at this C must do;
- ncli: `python -m ncli measure FILE --json --min-per-class K` (process start and imports
  included): both passes, every metric (pair statistics over C'(C'−1)/2 pairs, twice).

Minimum wall time over the repeats, all repeats listed; peak RSS of each process from
wait4 (the file is written by a child process, so that this one stays small).

Usage:
  python benchmarks/vocab_bench.py                              # C = 50,000, p = 128, N = 150,000; 1 and 2 threads
  python benchmarks/vocab_bench.py --classes 5000 --classes 20000 --classes 50000 --threads 1
  python benchmarks/vocab_bench.py --dim 768 --classes 50000 --repeat 1
Files go to benchmarks/_data/ (git-ignored); --keep keeps them for a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def zipf_labels(rng, n: int, C: int, exponent: float, cover: bool) -> np.ndarray:
    """n labels in [0, C) with P(c) ∝ 1/(c + 1)^exponent (shuffled); with ``cover`` the first
    C draws are replaced by every class once (a vocabulary whose every token occurs)."""
    weights = 1.0 / np.arange(1, C + 1, dtype=np.float64) ** exponent
    y = rng.choice(C, size=n, p=weights / weights.sum())
    if cover:
        y[:C] = np.arange(C)
    return rng.permutation(y)


def make_file(path: Path, n: int, p: int, C: int, exponent: float, cover: bool, seed: int = 0) -> None:
    from ncli.features.writer import FeatureWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    means = (rng.standard_normal((C, p)) * 0.6).astype(np.float32)
    W = (means - means.mean(axis=0) + 0.2 * rng.standard_normal((C, p))).astype(np.float32)
    b = (0.1 * rng.standard_normal(C)).astype(np.float32)
    block = 32768
    t = time.perf_counter()
    with FeatureWriter(path, num_classes=C, attrs={"epoch": 1, "feature_layer": "synthetic"}) as w:
        w.set_classifier(W, b)
        for split, rows in (("train", n), ("test", max(1, n // 10))):
            labels = zipf_labels(rng, rows, C, exponent, cover and split == "train")
            for start in range(0, rows, block):
                y = labels[start : start + block]
                H = means[y] + rng.standard_normal((y.size, p), dtype=np.float32)
                w.append(split, features=H, labels=y)
    print(f"  wrote {path.name}: {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t:.1f} s", flush=True)


def floor(path: str, min_per_class: int, threads: int) -> None:
    """Read every split; float32 logits and NCC products of every row against the kept classes.
    With several threads, blocks of rows run on that many worker threads with one BLAS thread
    each (as ncli does: multi-threaded BLAS on a loaded 2-core machine thrashes)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from ncli.features.reader import FeatureFile

    with FeatureFile(path) as ff:
        C, p = ff.num_classes, ff.feature_dim
        counts = np.zeros(C, dtype=np.int64)
        for chunk in ff.iter_chunks("train"):
            counts += np.bincount(chunk.labels, minlength=C)
        kept = int(np.count_nonzero(counts >= min_per_class))
        B = np.random.default_rng(1).standard_normal((p, 2 * kept)).astype(np.float32)
        rows = max(256, (16 << 20) // (4 * 2 * kept))  # a product block of about 16 MiB

        def product(block: np.ndarray) -> float:
            return float((block @ B)[0, 0])

        acc = 0.0
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            for split in ff.splits:
                for chunk in ff.iter_chunks(split, rows * threads):
                    blocks = [chunk.features[i : i + rows] for i in range(0, chunk.features.shape[0], rows)]
                    acc += sum(pool.map(product, blocks))
    print(json.dumps({"floor_checksum": acc, "kept": kept}))


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0, out  # Linux: KiB


def run_case(path: Path, threads: int, repeat: int, min_per_class: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    floor_cmd = [
        sys.executable, __file__, "--floor", str(path), "--min-per-class", str(min_per_class), "--threads", str(threads)
    ]
    ncli_cmd = [
        sys.executable, "-m", "ncli", "measure", str(path), "--json", "--threads", str(threads),
        "--min-per-class", str(min_per_class),
    ]
    floors, runs = [], []
    for _ in range(repeat):
        floors.append(timed(floor_cmd, env))
        runs.append(timed(ncli_cmd, env))
    record = json.loads(runs[-1][2])
    return {
        "file": path.name,
        "threads": threads,
        "classes_measured": record["classes_measured"],
        "floor_s": [round(w, 2) for w, _, _ in floors],
        "ncli_s": [round(w, 2) for w, _, _ in runs],
        "ratio": round(min(w for w, _, _ in runs) / min(w for w, _, _ in floors), 3),
        "floor_peak_rss_mb": round(max(r for _, r, _ in floors), 1),
        "ncli_peak_rss_mb": round(max(r for _, r, _ in runs), 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=int, action="append", help="C, repeatable (default 50000)")
    ap.add_argument("--dim", type=int, default=128, help="p (default 128)")
    ap.add_argument("--samples", type=int, default=150_000, help="train rows N (default 150,000; test N/10)")
    ap.add_argument("--zipf", type=float, default=1.07, help="Zipf exponent s of the labels (default 1.07)")
    ap.add_argument("--no-cover", action="store_true", help="do not force every class to occur once")
    ap.add_argument("--min-per-class", type=int, default=1, help="K passed to ncli (default 1)")
    ap.add_argument("--threads", type=int, action="append", help="threads, repeatable (default 1 and 2)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    if args.floor:
        floor(args.floor, args.min_per_class, (args.threads or [1])[0])
        return
    cover = not args.no_cover
    if args.make:
        make_file(Path(args.make[0]), *(int(x) for x in args.make[1:]), exponent=args.zipf, cover=cover)
        return
    DATA.mkdir(exist_ok=True)
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    for C in args.classes or [50_000]:
        name = f"vocab_{args.samples}x{args.dim}x{C}_s{args.zipf}{'' if cover else '_nocover'}.h5"
        path = DATA / name
        make = [sys.executable, __file__, "--make", str(path), str(args.samples), str(args.dim), str(C),
                "--zipf", str(args.zipf)] + (["--no-cover"] if not cover else [])
        subprocess.run(make, check=True)
        for threads in args.threads or [1, 2]:
            r = run_case(path, threads, args.repeat, args.min_per_class)
            results.append(r)
            print(
                f"C={C:>6} p={args.dim} C'={r['classes_measured']:>6} threads={threads}  "
                f"floor {min(r['floor_s']):7.2f} s  ncli {min(r['ncli_s']):7.2f} s  ratio {r['ratio']:5.2f}  "
                f"(ncli runs {r['ncli_s']}, floor runs {r['floor_s']})  "
                f"peak RSS ncli {r['ncli_peak_rss_mb']:7.1f} MB, floor {r['floor_peak_rss_mb']:6.1f} MB  "
                f"load {r['load_avg']}",
                flush=True,
            )
        if not args.keep:
            path.unlink()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
