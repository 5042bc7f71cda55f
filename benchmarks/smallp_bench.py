"""Small p: ``ncli measure`` end to end against a dense in-memory float64 numpy computation of
the same metrics, in the same run (issue 16, target 3: ncli ≤ 0.5× the dense baseline).

For each case (default 50,000 × 512 with C = 10 and 20,000 × 512 with C = 100; a test split of
N/10 rows) it writes a synthetic format-1 file (``measure_bench.make_file``) and runs, as
separate processes with the same thread count (OMP/OPENBLAS env; ``--threads`` for ncli),
alternating, ``--repeat`` times:

  dense : what a user would write with numpy: load every split's features as float64 and the
          labels and classifier (h5py), class means (one-hot GEMM), Σ_W = DᵀD/N (D = H − μ_y),
          Σ_B and its eigendecomposition, NC1 = Tr(Σ_W Σ_B⁺)/C, NC2 (norms and cosines of the
          centred means and classifier rows), NC3, and every split's NCC and network decisions
          (accuracy, NCC accuracy, disagreement). Timed inside its process, from the file's
          opening to the last result: its interpreter start and imports are not counted;
  ncli  : ``python -m ncli measure FILE --json --threads T``, the whole process (start-up,
          imports, both passes, exact decisions, every metric);
  fixed : the same command on a file of the same p and C with two rows per class: ncli's
          start-up and per-file fixed work (reading the classifier, the C × C metrics) with
          almost no rows. fixed / dense is the least ratio ncli could reach on the case.

It prints the best wall time of each and the ratio ncli / dense (target ≤ 0.5), with the load
average. Files go to benchmarks/_data/ (git-ignored); --keep keeps them.

    python benchmarks/smallp_bench.py
    python benchmarks/smallp_bench.py --case 50000x512x10 --threads 1 --repeat 5
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


def dense(path: str) -> dict:
    """The dense float64 computation; prints its own time (from opening the file) and a few
    metrics as JSON."""
    import h5py

    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        C = int(f.attrs["num_classes"])
        W = f["classifier/weight"][:].astype(np.float64)
        b = f["classifier/bias"][:].astype(np.float64)
        splits = {name: (f[name]["features"][:].astype(np.float64), f[name]["labels"][:].astype(np.int64))
                  for name in ("train", "test") if name in f}
    H, y = splits["train"]
    N, p = H.shape
    onehot = np.zeros((N, C))
    onehot[np.arange(N), y] = 1.0
    counts = onehot.sum(0)
    M = (onehot.T @ H) / counts[:, None]  # class means (C, p)
    mu_g = M.mean(0)
    D = H - M[y]
    sigma_w = D.T @ D / N
    centred = M - mu_g
    sigma_b = centred.T @ centred / C
    evals, evecs = np.linalg.eigh(sigma_b)
    keep = evals > evals.max() * max(p, C) * np.finfo(float).eps
    pinv_b = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    nc1 = float(np.trace(sigma_w @ pinv_b) / C)
    off = ~np.eye(C, dtype=bool)

    def nc2(rows):
        norms = np.linalg.norm(rows, axis=1)
        cos = (rows @ rows.T) / np.outer(norms, norms)
        return float(norms.std() / norms.mean()), float(np.std(cos[off]))

    equinorm_means, equiangular_means = nc2(centred)
    equinorm_classifiers, equiangular_classifiers = nc2(W)
    self_duality = float(np.linalg.norm(W / np.linalg.norm(W) - centred / np.linalg.norm(centred)) ** 2)
    sq_means = (M**2).sum(1)
    result = {"nc1": nc1, "equinorm_means": equinorm_means, "equiangular_means": equiangular_means,
              "equinorm_classifiers": equinorm_classifiers, "equiangular_classifiers": equiangular_classifiers,
              "self_duality": self_duality}
    for name, (Hs, ys) in splits.items():
        ncc = np.argmax(2 * Hs @ M.T - sq_means, axis=1)  # argmin ‖h − μ_c‖²
        net = np.argmax(Hs @ W.T + b, axis=1)
        result[name] = {"accuracy": float((net == ys).mean()), "ncc_accuracy": float((ncc == ys).mean()),
                        "ncc_disagreement": float((ncc != net).mean())}
    result["seconds"] = time.perf_counter() - t
    return result


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    got = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if got.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{got.stderr}")
    return wall, got.stdout


def run_case(path: Path, tiny: Path, threads: int, repeat: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    dense_cmd = [sys.executable, __file__, "--dense", str(path)]
    ncli_cmd, fixed_cmd = (
        [sys.executable, "-m", "ncli", "measure", str(file), "--json", "--threads", str(threads)] for file in (path, tiny)
    )
    dense_runs, dense_process, ncli_runs, fixed_runs = [], [], [], []
    for _ in range(repeat):
        fixed_runs.append(timed(fixed_cmd, env)[0])
        wall, out = timed(dense_cmd, env)
        dense_process.append(wall)
        dense_runs.append(json.loads(out)["seconds"])
        wall, out = timed(ncli_cmd, env)
        ncli_runs.append(wall)
    record, baseline = json.loads(out), json.loads(timed(dense_cmd, env)[1])
    agree = abs(record["metrics"]["nc1"] - baseline["nc1"]) <= 1e-6 * abs(baseline["nc1"]) and all(
        record["splits"][s]["ncc_accuracy"] == baseline[s]["ncc_accuracy"] for s in ("train", "test"))
    return {"dense_s": min(dense_runs), "dense_process_s": min(dense_process), "ncli_s": min(ncli_runs),
            "ratio": min(ncli_runs) / min(dense_runs), "agree": agree,
            "fixed_s": min(fixed_runs), "fixed_ratio": min(fixed_runs) / min(dense_runs),
            "runs": {"dense": [round(x, 3) for x in dense_runs], "ncli": [round(x, 3) for x in ncli_runs]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", help=argparse.SUPPRESS)
    ap.add_argument("--case", action="append", help="NxPxC, repeatable (default: 50000x512x10 and 20000x512x100)")
    ap.add_argument("--threads", type=int, action="append", help="threads, repeatable (default: 1 and 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    if args.dense:
        print(json.dumps(dense(args.dense)))
        return
    sys.path.insert(0, str(HERE))
    from measure_bench import make_file

    DATA.mkdir(exist_ok=True)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cpus; best of {args.repeat}")
    for case in args.case or ["50000x512x10", "20000x512x100"]:
        n, p, C = (int(x) for x in case.split("x"))
        path = DATA / f"smallp_{n}x{p}x{C}.h5"
        tiny = DATA / f"smallp_{2 * C}x{p}x{C}.h5"
        make_file(path, n, p, C)
        make_file(tiny, 2 * C, p, C)
        for threads in args.threads or [1, 2]:
            r = run_case(path, tiny, threads, args.repeat)
            print(
                f"{case:>14}  threads={threads}  dense {r['dense_s']:6.3f} s (its process {r['dense_process_s']:6.3f} s)"
                f"   ncli {r['ncli_s']:6.3f} s   ratio {r['ratio']:5.2f} (target ≤ 0.5)   same nc1/NCC: {r['agree']}"
                f"   fixed {r['fixed_s']:6.3f} s (ratio {r['fixed_ratio']:4.2f})"
                f"   load {os.getloadavg()[0]:.2f}   runs {r['runs']}",
                flush=True,
            )
        if not args.keep:
            path.unlink()
            tiny.unlink()


if __name__ == "__main__":
    main()
