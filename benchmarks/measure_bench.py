"""Benchmark `ncli measure` against the I/O + GEMM floor, in the same run.

For each case it writes a synthetic format-1 file (float32 features, C classes), then times,
as separate processes with the same BLAS thread count:
  floor : one streamed read of the features (same chunking as ncli) with one float32 GEMM
          per chunk against a p × 2C matrix — the least work any NC1 + NC4 tool must do;
  exact : the least work of an *exact* two-pass method, read as the floor reads (ncli's work
          less every per-class sum, decision and metric): pass 1 reads the defining split;
          pass 2 reads it again, centres each chunk on its class means in float64 and
          projects it on k = C − 1 float64 columns (NC1 to 1e-9 needs float64 sums of
          products of centred rows), and forms the float32 logits (p × C); every other
          split: one read and one float32 GEMM against p × 2C, as in the floor. BLAS threads
          as the floor;
  ncli  : `ncli measure FILE --json` (two passes, float64).
exact / floor is about the best ratio an exact method can reach on this machine (issue 16 asks
ncli ≤ 1.5× the floor). Each is run `--repeat` times alternately; the minimum wall time is
reported with the peak RSS of the ncli process (from wait4). Target (issue #2): wall <=
2 x floor + 1 s and peak RSS <= 400 MB whatever N.

Usage:
  python benchmarks/measure_bench.py                  # both cases of the issue, 1 and 2 threads
  python benchmarks/measure_bench.py --quick          # small sizes, for a smoke run
  python benchmarks/measure_bench.py --case 1000000x512x100 --threads 1

Files go to benchmarks/_data/ (git-ignored; ~2.4 GB for the default cases). Keep them with
--keep to rerun quickly.
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


def make_file(path: Path, n: int, p: int, C: int, seed: int = 0) -> None:
    from ncli.features.writer import FeatureWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((C, p)).astype(np.float32) * 2
    W = rng.standard_normal((C, p)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    block = 65536
    t = time.perf_counter()
    with FeatureWriter(path, num_classes=C, attrs={"epoch": 1, "feature_layer": "synthetic"}) as w:
        w.set_classifier(W, b)
        for split, rows in (("train", n), ("test", max(C, n // 10))):
            for start in range(0, rows, block):
                m = min(block, rows - start)
                y = rng.integers(0, C, m)
                y[: min(m, C)] = np.arange(min(m, C))
                H = means[y] + rng.standard_normal((m, p), dtype=np.float32)
                w.append(split, features=H, labels=y)
    print(f"  wrote {path.name}: {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t:.1f} s", flush=True)


def floor(path: str) -> None:
    """One streamed read + one float32 GEMM (p x 2C) per chunk over every split."""
    import h5py

    from ncli.features.reader import FeatureFile

    with FeatureFile(path) as ff:
        C, p = ff.num_classes, ff.feature_dim
        B = np.random.default_rng(1).standard_normal((p, 2 * C)).astype(np.float32)
        acc = 0.0
        for split in ff.splits:
            rows = ff.default_chunk_rows(split)
            ds = ff._h5[split]["features"]
            n = ds.shape[0]
            for start in range(0, n, rows):
                H = ds[start : start + rows]
                acc += float((H @ B)[0, 0])
    print(json.dumps({"floor_checksum": acc}))


def exact_floor(path: str) -> None:
    """Two reads of the defining split, float64 centring and projection on C − 1 columns and
    float32 logits; one read and one p x 2C float32 GEMM per chunk of every other split."""
    from ncli.features.reader import FeatureFile

    with FeatureFile(path) as ff:
        C, p = ff.num_classes, ff.feature_dim
        rng = np.random.default_rng(1)
        means = rng.standard_normal((C, p))
        U = np.linalg.qr(rng.standard_normal((p, C - 1)))[0]
        W = rng.standard_normal((p, C)).astype(np.float32)
        B = rng.standard_normal((p, 2 * C)).astype(np.float32)
        acc = 0.0
        for split in ff.splits:
            rows = ff.default_chunk_rows(split)
            features, labels = ff._h5[split]["features"], ff._h5[split]["labels"]
            n = features.shape[0]
            defining = split == "train"
            if defining:  # pass 1: the class sums need every row once
                for start in range(0, n, rows):
                    acc += float(features[start : start + rows][0, 0])
            for start in range(0, n, rows):
                H = features[start : start + rows]
                if defining:
                    D = H - means[labels[start : start + rows]]  # float64
                    acc += float((D @ U)[0, 0]) + float((H @ W)[0, 0])
                else:
                    acc += float((H @ B)[0, 0])
    print(json.dumps({"exact_floor_checksum": acc}))


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def run_case(path: Path, threads: int, repeat: int) -> dict:
    env = dict(os.environ)
    for v in THREAD_VARS:
        env[v] = str(threads)
    floor_cmd = [sys.executable, __file__, "--floor", str(path)]
    exact_cmd = [sys.executable, __file__, "--exact-floor", str(path)]
    ncli_cmd = [sys.executable, "-m", "ncli", "measure", str(path), "--json", "--threads", str(threads)]
    f_runs, e_runs, n_runs = [], [], []
    for _ in range(repeat):
        f_runs.append(timed(floor_cmd, env))
        e_runs.append(timed(exact_cmd, env))
        n_runs.append(timed(ncli_cmd, env))
    f_wall = min(w for w, _ in f_runs)
    e_wall = min(w for w, _ in e_runs)
    n_wall = min(w for w, _ in n_runs)
    rss = max(r for _, r in n_runs)
    f_rss = max(r for _, r in f_runs)
    return {
        "file": path.name,
        "threads": threads,
        "floor_s": round(f_wall, 3),
        "floor_rss_mb": round(f_rss, 1),
        "exact_floor_s": round(e_wall, 3),
        "exact_ratio": round(e_wall / f_wall, 3),
        "ncli_s": round(n_wall, 3),
        "ratio": round(n_wall / f_wall, 3),
        "load": round(os.getloadavg()[0], 2),
        "target_s": round(2 * f_wall + 1, 3),
        "ok_time": n_wall <= 2 * f_wall + 1,
        "ncli_peak_rss_mb": round(rss, 1),
        "ok_rss": rss <= 400,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    ap.add_argument("--exact-floor", help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--case", action="append", help="NxPxC, repeatable (default: the issue's two cases)")
    ap.add_argument("--threads", type=int, action="append", help="BLAS threads, repeatable (default: 1 and 2)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small cases for a smoke run")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    if args.floor:
        floor(args.floor)
        return
    if args.exact_floor:
        exact_floor(args.exact_floor)
        return
    if args.make:
        make_file(Path(args.make[0]), *(int(x) for x in args.make[1:]))
        return
    cases = args.case or (["100000x512x100", "20000x2048x10"] if args.quick else ["1000000x512x100", "50000x2048x10"])
    threads = args.threads or [1, 2]
    DATA.mkdir(exist_ok=True)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}", flush=True)
    results = []
    for case in cases:
        n, p, C = (int(x) for x in case.split("x"))
        path = DATA / f"bench_{n}x{p}x{C}.h5"
        # in a child process, so that this process stays small: a child's peak RSS (wait4)
        # counts the memory of the parent it was forked from
        subprocess.run([sys.executable, __file__, "--make", str(path), str(n), str(p), str(C)], check=True)
        for t in threads:
            r = run_case(path, t, args.repeat)
            results.append(r)
            print(
                f"{case:>18}  threads={t}  floor {r['floor_s']:7.2f} s   exact floor {r['exact_floor_s']:7.2f} s "
                f"({r['exact_ratio']:4.2f}x)   ncli {r['ncli_s']:7.2f} s   "
                f"ratio {r['ratio']:5.2f}  (target <= {r['target_s']:.2f} s: {'ok' if r['ok_time'] else 'MISSED'})   "
                f"peak RSS {r['ncli_peak_rss_mb']:6.1f} MB ({'ok' if r['ok_rss'] else 'MISSED'})   load {r['load']:.2f}",
                flush=True,
            )
        if not args.keep:
            path.unlink()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
