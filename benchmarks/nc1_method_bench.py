"""The two ways `ncli measure` gets Σ_W on span(M), timed against each other in one process.

"project" computes Z = D·U (p·k float64 multiply-adds per row) and scores NCC from Z;
"scatter" accumulates Σ DᵀD with a symmetric rank-k update (p²/2) and scores NCC from the
centred rows (see ncli.measure.engine.nc1_method, which picks the cheaper one by that cost model).
Runs alternate; the best of --repeat is printed with the method `auto` picks.

Usage:
  python benchmarks/nc1_method_bench.py                        # 100000 x 512 x 1000 and 200000 x 512 x 100
  python benchmarks/nc1_method_bench.py --case 50000x256x1000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="NxPxC, repeatable")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(HERE))
    from measure_bench import DATA, make_file

    from ncli.measure.engine import NumpyBackend, cheaper_nc1_method
    from ncli.measure.record import measure_file

    DATA.mkdir(exist_ok=True)
    print(f"threads={args.threads}", flush=True)
    for case in args.case or ["100000x512x1000", "200000x512x100"]:
        n, p, C = (int(x) for x in case.split("x"))
        path = DATA / f"bench_{n}x{p}x{C}.h5"
        make_file(path, n, p, C)
        k = min(p, C)
        best = {}
        records = {}
        for _ in range(args.repeat):
            for method in ("project", "scatter"):
                backend = NumpyBackend(threads=args.threads, nc1_method=method)
                t = time.perf_counter()
                records[method] = measure_file(path, backend=backend)
                best[method] = min(best.get(method, float("inf")), time.perf_counter() - t)
        a, b = records["project"]["metrics"]["nc1"], records["scatter"]["metrics"]["nc1"]
        print(
            f"{case:>18}  project {best['project']:6.2f} s  scatter {best['scatter']:6.2f} s  "
            f"scatter/project {best['scatter'] / best['project']:.2f}  auto picks {cheaper_nc1_method(p, k, C)}  "
            f"nc1 rel. diff {abs(a - b) / abs(a):.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
