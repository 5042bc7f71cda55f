"""Start-up of the command line against Python's own (issue 16, target 2).

Runs, as separate processes, interleaved round by round:
  floor   : python -c "import numpy, h5py"   (what any HDF5 + numpy tool pays)
  measure : python -m ncli measure SMALL.h5 --json   (the 220 kB fixture: start-up dominates)
  help    : python -m ncli --help
  pass    : python -c pass   (the interpreter alone, for reference)
and prints the best and the median wall time of each, and the ratios measure / floor (target
≤ 1.5) and help (target ≤ 0.2 s). ``--importtime`` prints the costliest imports of the
measure command (``python -X importtime``), cumulative, two levels deep.

    python benchmarks/startup_bench.py                  # 15 rounds
    python benchmarks/startup_bench.py --rounds 30 --importtime
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "features" / "mlp_epoch0300.h5"


def commands(fixture: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "pass": [py, "-c", "pass"],
        "floor": [py, "-c", "import numpy, h5py"],
        "measure": [py, "-m", "ncli", "measure", str(fixture), "--json"],
        "help": [py, "-m", "ncli", "--help"],
    }


# Bytecode caches as an installed package has them (a shell may set PYTHONDONTWRITEBYTECODE):
# written once, by the warm-up round, into a temporary folder rather than the source tree.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "ncli-startup-bench-pycache")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t


def import_profile(cmd: list[str], depth: int = 1, least_ms: float = 3.0) -> None:
    """The imports of ``cmd`` costing at least ``least_ms`` (cumulative), down to ``depth``."""
    got = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, check=True, env=ENV)
    total = 0.0
    for line in got.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        level = (len(m[3]) - 1) // 2
        cumulative_ms = int(m[2]) / 1000
        if level == 0:
            total += cumulative_ms
        if level <= depth and cumulative_ms >= least_ms:
            print(f"  {cumulative_ms:7.1f} ms  {'  ' * level}{m[4]}")
    print(f"  {total:7.1f} ms  all imports")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--importtime", action="store_true", help="also print the measure command's costliest imports")
    args = ap.parse_args()
    cmds = commands(args.fixture)
    for cmd in cmds.values():  # warm the page cache and the bytecode caches
        timed(cmd)
    runs: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            runs[name].append(timed(cmd))
    import typer

    print(
        f"python {sys.version.split()[0]}, typer {typer.__version__}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds"
    )
    for name, times in runs.items():
        print(f"  {name:8s} best {min(times) * 1000:6.0f} ms   median {statistics.median(times) * 1000:6.0f} ms")
    best = {name: min(times) for name, times in runs.items()}
    median = {name: statistics.median(times) for name, times in runs.items()}
    print(
        f"measure / floor: {best['measure'] / best['floor']:.2f} (best), {median['measure'] / median['floor']:.2f} (median)"
        f"   target ≤ 1.5\n"
        f"--help: {best['help']:.3f} s (best), {median['help']:.3f} s (median)   target ≤ 0.2 s"
    )
    if args.importtime:
        print("imports of the measure command:")
        import_profile(cmds["measure"])


if __name__ == "__main__":
    main()
