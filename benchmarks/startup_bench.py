"""Start-up of the command line against Python's own (issue 16, target 2).

Runs, as separate processes, interleaved round by round:
  floor   : python -c "import numpy, h5py"   (what any HDF5 + numpy tool pays)
  measure : python -m ncli measure SMALL.h5 --json   (the 220 kB fixture: start-up dominates)
  help    : python -m ncli --help
  pass    : python -c pass   (the interpreter alone, for reference)
and prints the best and the median wall time of each and its best CPU time (user + system), and
the ratios measure / floor (target ≤ 1.5) and help (target ≤ 0.2 s). ``--importtime`` prints the costliest imports of the
measure command (``python -X importtime``), cumulative, two levels deep.

    python benchmarks/startup_bench.py                  # 15 rounds
    python benchmarks/startup_bench.py --rounds 30 --importtime
    python benchmarks/startup_bench.py --baseline /tmp/old-typer:/tmp/old-checkout   # before/after
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


def baseline_env(pythonpath: str) -> dict[str, str]:
    """The environment of the ``--baseline`` commands: another checkout (and its typer) first
    on the path, with bytecode caches of their own."""
    return dict(ENV, PYTHONPATH=pythonpath, PYTHONPYCACHEPREFIX=ENV["PYTHONPYCACHEPREFIX"] + "-baseline")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU time (user + system, from wait4) is the steadier
    figure on a machine that other work keeps busy."""
    t = time.perf_counter()
    # the baseline runs outside the source tree (``-m`` puts the working directory first on the path)
    cwd = tempfile.gettempdir() if env is not None and "PYTHONPATH" in env else None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or ENV, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime


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
    ap.add_argument(
        "--baseline", metavar="PYTHONPATH",
        help="also time measure and --help with this PYTHONPATH first (e.g. an older checkout and its typer)",
    )
    ap.add_argument("--importtime", action="store_true", help="also print the measure command's costliest imports")
    args = ap.parse_args()
    cmds = commands(args.fixture)
    envs = {name: ENV for name in cmds}
    if args.baseline:
        for name in ("measure", "help"):
            cmds[f"{name}@base"] = cmds[name]
            envs[f"{name}@base"] = baseline_env(args.baseline)
    for name, cmd in cmds.items():  # warm the page cache and the bytecode caches
        timed(cmd, envs[name])
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            runs[name].append(timed(cmd, envs[name]))
    import typer

    print(
        f"python {sys.version.split()[0]}, typer {typer.__version__}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds"
    )
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    median = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    for name in runs:
        print(f"  {name:8s} wall best {best[name][0] * 1000:6.0f} ms, median {median[name] * 1000:6.0f} ms;"
              f"  CPU best {best[name][1] * 1000:6.0f} ms")
    print(
        f"measure / floor: {best['measure'][0] / best['floor'][0]:.2f} (wall, best), "
        f"{median['measure'] / median['floor']:.2f} (wall, median), "
        f"{best['measure'][1] / best['floor'][1]:.2f} (CPU, best)   target ≤ 1.5\n"
        f"--help: {best['help'][0]:.3f} s (wall, best), {median['help']:.3f} s (median), "
        f"{best['help'][1]:.3f} s (CPU, best)   target ≤ 0.2 s"
    )
    if args.baseline:
        print(
            f"baseline: measure / floor {best['measure@base'][0] / best['floor'][0]:.2f} (wall, best), "
            f"{median['measure@base'] / median['floor']:.2f} (wall, median), "
            f"{best['measure@base'][1] / best['floor'][1]:.2f} (CPU, best); --help {best['help@base'][0]:.3f} s (wall, best), "
            f"{median['help@base']:.3f} s (median), {best['help@base'][1]:.3f} s (CPU, best)"
        )
    if args.importtime:
        print("imports of the measure command:")
        import_profile(cmds["measure"])


if __name__ == "__main__":
    main()
