"""GPU check of ``ncli extract --device cuda`` (issue 6, item 2), for a machine with CUDA.

Not run in CI (there is no GPU there). One short script, a few minutes at most:

    python benchmarks/gpu_check.py                 # everything below
    python benchmarks/gpu_check.py --n 8192 --no-torchrun

1. Correctness: the bundled fixtures (MLP; CNN with --layer features.2 --pool avg; the
   TorchScript CNN) extracted on cuda and on cpu agree: labels and index exactly, features,
   logits and layers to 1e-5 relative (max |cuda - cpu| / max |cpu|; float32 kernels differ
   between devices). Also: --device auto picks cuda, and the file records the device.
2. Throughput on a synthetic CNN (3x32x32, as benchmarks/extract_bench.py): ncli extract on
   cuda (pinned batches, non_blocking copies, device-to-host copies on a side stream
   overlapped with the next batch and the HDF5 writes), with --amp, against a bare
   inference_mode loop on cuda over the same batches, and ncli on cpu.
3. With two or more GPUs: ``torchrun --nproc_per_node 2 -m ncli extract --device cuda``
   (cpu:gloo,cuda:nccl) against the single-GPU file (same tolerance; bitwise equality is
   reported, not required).

Exit status 0 when every check passes, 1 when one fails, 2 when CUDA is not available.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
REL = 1e-5

FIXTURES = [  # name, checkpoint, options
    ("mlp", FIX / "checkpoints" / "mlp_epoch0300.pt", dict(arch=f"{FIX / 'models.py'}:MLP")),
    ("cnn+layer", FIX / "checkpoints" / "cnn_epoch0100.pt",
     dict(arch=f"{FIX / 'models.py'}:SmallCNN", layers=("features.2",), pool="avg")),
    ("cnn scripted", FIX / "checkpoints" / "cnn_epoch0100_scripted.pt", dict()),
]


def read_all(path: Path) -> tuple[dict, dict]:
    import h5py

    out: dict = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[...]) if hasattr(o, "shape") else None)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return out, attrs


def compare(a_path: Path, b_path: Path) -> tuple[bool, float, bool]:
    """(within tolerance, worst relative error, bitwise equal) over every dataset."""
    import numpy as np

    a, _ = read_all(a_path)
    b, _ = read_all(b_path)
    if sorted(a) != sorted(b):
        print(f"    datasets differ: {sorted(set(a) ^ set(b))}")
        return False, float("inf"), False
    worst, good, bitwise = 0.0, True, True
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            print(f"    {name}: shape {x.shape} vs {y.shape}")
            good = False
            continue
        bitwise &= bool(np.array_equal(x, y))
        if x.dtype.kind in "iu":
            if not np.array_equal(x, y):
                print(f"    {name}: integer data differ")
                good = False
            continue
        if name.startswith("classifier"):
            continue  # copied, not computed: equal by construction (bitwise flag above covers it)
        scale = max(float(np.abs(y).max()), 1e-12)
        rel = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) / scale
        worst = max(worst, rel)
        if rel > REL:
            print(f"    {name}: relative error {rel:.3g} > {REL:g}")
            good = False
    return good, worst, bitwise


def run_extract(ckpt, out: Path, data, device: str, **kw) -> float:
    from ncli.extract.api import extract

    t = time.perf_counter()
    extract(ckpt, out, data, device=device, force=True, progress=False, **kw)
    return time.perf_counter() - t


def correctness(tmp: Path) -> bool:
    ok = True
    data = [str(FIX / "digits.npz")]
    print("1. cuda vs cpu on the fixtures (digits: 1200 train + 597 test rows)")
    for name, ckpt, opts in FIXTURES:
        cpu, gpu = tmp / f"{name}-cpu.h5".replace(" ", "_"), tmp / f"{name}-cuda.h5".replace(" ", "_")
        run_extract(ckpt, cpu, data, "cpu", batch_size=256, **opts)
        run_extract(ckpt, gpu, data, "cuda", batch_size=256, **opts)
        good, worst, bitwise = compare(gpu, cpu)
        _, attrs = read_all(gpu)
        dev_ok = str(attrs.get("device", "")).startswith("cuda")
        print(f"   {name:13s} max rel error {worst:.2e}  bitwise {bitwise}  device attr {attrs.get('device')!r}  "
              f"{'PASS' if good and dev_ok else 'FAIL'}")
        ok &= good and dev_ok
    auto = tmp / "auto.h5"
    run_extract(FIXTURES[0][1], auto, data, "auto", batch_size=256, **FIXTURES[0][2])
    _, attrs = read_all(auto)
    picked = str(attrs.get("device"))
    print(f"   --device auto picked {picked!r}: {'PASS' if picked.startswith('cuda') else 'FAIL'}")
    ok &= picked.startswith("cuda")
    return ok


def throughput(tmp: Path, n: int, batch_size: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import extract_bench as eb

    print(f"2. throughput, synthetic CNN 3x32x32, N={n}, batch {batch_size}")
    model, ckpt, data = eb.make_inputs(tmp, "cnn", n)
    arch = f"{ROOT / 'benchmarks' / 'extract_bench.py'}:BenchCNN"
    src = [f"train={data}"]
    run_extract(ckpt, tmp / "warm.h5", src, "cuda", arch=arch, batch_size=batch_size)  # CUDA context, cudnn
    gpu_model = model.cuda()

    def bare() -> float:
        import h5py

        torch.cuda.synchronize()
        t = time.perf_counter()
        with h5py.File(data, "r") as f, torch.inference_mode():
            x = f["x"]
            for s in range(0, n, batch_size):
                gpu_model(torch.from_numpy(x[s : s + batch_size]).cuda(non_blocking=True))
        torch.cuda.synchronize()
        return time.perf_counter() - t

    rows = [
        ("bare inference_mode loop, cuda", min(bare() for _ in range(3))),
        ("ncli extract --device cuda", min(run_extract(ckpt, tmp / "g.h5", src, "cuda", arch=arch, batch_size=batch_size) for _ in range(3))),
        ("ncli extract --device cuda --amp", min(run_extract(ckpt, tmp / "a.h5", src, "cuda", arch=arch, batch_size=batch_size, amp=True) for _ in range(3))),
        ("ncli extract --device cpu", run_extract(ckpt, tmp / "c.h5", src, "cpu", arch=arch, batch_size=batch_size)),
    ]
    for label, t in rows:
        print(f"   {label:34s} {n / t:12,.0f} samples/s  ({t:.2f} s)")
    good, worst, _ = compare(tmp / "g.h5", tmp / "c.h5")
    print(f"   synthetic cuda vs cpu: max rel error {worst:.2e} {'PASS' if good else 'FAIL'}")


def torchrun_check(tmp: Path) -> bool:
    import torch

    if torch.cuda.device_count() < 2:
        print("3. torchrun: skipped (one GPU)")
        return True
    print("3. torchrun --nproc_per_node 2 --device cuda vs one GPU")
    ckpt, opts = FIXTURES[1][1], FIXTURES[1][2]
    single, dist = tmp / "single-cuda.h5", tmp / "dist-cuda.h5"
    run_extract(ckpt, single, [str(FIX / "digits.npz")], "cuda", batch_size=256, **opts)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ncli", "extract",
           str(ckpt), "--arch", opts["arch"], "--layer", "features.2", "--pool", "avg", "--data", str(FIX / "digits.npz"),
           "-b", "256", "--device", "cuda", "-o", str(dist), "-q"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        print("   FAIL (torchrun exited non-zero)")
        return False
    good, worst, bitwise = compare(dist, single)
    _, attrs = read_all(dist)
    print(f"   {time.perf_counter() - t:.1f} s, world_size {attrs.get('world_size')}, max rel error {worst:.2e}, "
          f"bitwise {bitwise}: {'PASS' if good else 'FAIL'}")
    return good


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--n", type=int, default=16384, help="samples in the throughput workload (default 16384)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-torchrun", action="store_true", help="skip the two-GPU torchrun check")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "run this on a machine with a GPU", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
          f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ok = correctness(tmp)
        throughput(tmp, args.n, args.batch_size)
        if not args.no_torchrun:
            ok &= torchrun_check(tmp)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
