"""GPU check of the accumulator API and ``ncli extract --stats-only --device cuda`` (issue 13),
for a machine with CUDA. Not run in CI (no GPU there); about a minute:

    python benchmarks/accumulator_gpu_check.py

1. Correctness: an Accumulator fed float32 / float16 CUDA tensors in shuffled batches equals
   one fed the same rows as numpy arrays (1e-9 relative on every metric, equal decisions).
2. Pass 1 never waits on the GPU: ``acc.update`` on CUDA tensors runs under
   ``torch.cuda.set_sync_debug_mode("error")`` for 63 batches (the 64th reads the checks).
3. A bad label on the GPU is reported (naming the batch) before any result.
4. Overhead: a small CNN's training step on the GPU, forward pass vs ``acc.update`` of its
   features (CUDA events), and the eval forward vs ``acc.evaluate``.
5. ``ncli extract --stats-only --device cuda`` of the fixture MLP equals ``ncli measure`` of the
   feature file extracted on cuda (1e-9 relative).

Exit status 0 when every check passes, 1 when one fails, 2 when CUDA is not available.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ncli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def close(a: dict, b: dict, rtol: float = 1e-9) -> bool:
    from reference import close as near

    metrics = all(near(a["metrics"][k], b["metrics"][k], rtol) for k in b["metrics"])
    splits = all(near(a["splits"][s][k], v, rtol) for s in b["splits"] for k, v in b["splits"][s].items())
    return metrics and splits


def correctness() -> bool:
    rng = np.random.default_rng(0)
    C, p, n = 20, 64, 20000
    means = 3 * rng.standard_normal((C, p))
    y = rng.integers(0, C, n)
    H = (means[y] + rng.standard_normal((n, p))).astype(np.float16).astype(np.float32)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    ok = True
    for dtype in (torch.float32, torch.float16):
        host, gpu = ncli.Accumulator(C, W=W, b=b), ncli.Accumulator(C, W=torch.from_numpy(W).cuda(), b=b)
        order = rng.permutation(n)
        for rows in np.array_split(order, 37):
            host.update(H[rows], y[rows])
            gpu.update(torch.from_numpy(H[rows]).cuda().to(dtype), torch.from_numpy(y[rows]).cuda())
        for rows in np.array_split(order, 23):
            host.evaluate(H[rows], y[rows])
            gpu.evaluate(torch.from_numpy(H[rows]).cuda().to(dtype), torch.from_numpy(y[rows]).cuda())
        same = close(gpu.measure(), host.measure())
        print(f"1. {dtype}: cuda == numpy to 1e-9: {same}")
        ok &= same
    return ok


def no_sync_in_pass1() -> bool:
    acc = ncli.Accumulator(10)
    x = torch.randn(256, 128, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    acc.update(x, y)  # first batch: backends and buffers are made (allocation may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(62):
            acc.update(x, y)
        waited = False
    except RuntimeError as exc:
        waited = True
        print(f"2. pass 1 synchronised: {exc}")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"2. 62 update() calls without waiting on the GPU: {not waited}")
    return not waited


def bad_label() -> bool:
    acc = ncli.Accumulator(10)
    y = torch.randint(0, 10, (256,), device="cuda")
    y[5] = 12
    acc.update(torch.randn(256, 8, device="cuda"), torch.randint(0, 10, (256,), device="cuda"))
    acc.update(torch.randn(256, 8, device="cuda"), y)
    try:
        acc.evaluate(torch.randn(256, 8, device="cuda"), y % 10)
    except Exception as exc:
        named = "batch 1 of split 'train': labels outside [0, 10)" in str(exc)
        print(f"3. bad label reported: {named} ({exc})")
        return named
    print("3. bad label NOT reported")
    return False


def overhead() -> None:
    from extract_bench import BenchCNN

    for num_classes in (10, 100):
        model = BenchCNN(num_classes).cuda()
        cap = ncli.capture(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(128, 3, 32, 32, device="cuda")
        y = torch.randint(0, num_classes, (128,), device="cuda")
        acc = ncli.Accumulator(num_classes)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        forward = update = 0.0
        for step in range(60):
            events[0].record()
            logits = model(x)
            events[1].record()
            acc.update(cap.features, y)
            events[2].record()
            optimizer.zero_grad()
            F.cross_entropy(logits, y).backward()
            optimizer.step()
            torch.cuda.synchronize()
            if step >= 10:
                forward += events[0].elapsed_time(events[1])
                update += events[1].elapsed_time(events[2])
        model.eval()
        acc.set_classifier(cap.weight, cap.bias)
        eval_forward = evaluate = 0.0
        with torch.no_grad():
            for step in range(60):
                events[0].record()
                model(x)
                events[1].record()
                acc.evaluate(cap.features, y)
                events[2].record()
                torch.cuda.synchronize()
                if step >= 10:
                    eval_forward += events[0].elapsed_time(events[1])
                    evaluate += events[1].elapsed_time(events[2])
        print(f"4. C={num_classes}: forward {forward / 50:.3f} ms/batch, update {100 * update / forward:.1f} % of it; "
              f"eval forward {eval_forward / 50:.3f} ms, evaluate {100 * evaluate / eval_forward:.1f} % of it")
        cap.close()


def stats_only() -> bool:
    from typer.testing import CliRunner

    from ncli.cli import app

    run = CliRunner().invoke
    args = [str(ROOT / "fixtures/checkpoints/mlp_epoch0300.pt"), "--arch", f"{ROOT / 'fixtures/models.py'}:MLP",
            "--data", str(ROOT / "fixtures/digits.npz"), "--device", "cuda", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        features, stats = Path(tmp) / "f.h5", Path(tmp) / "s.h5"
        assert run(app, ["extract", *args, "-o", str(features)]).exit_code == 0
        result = run(app, ["extract", *args, "-o", str(stats), "--stats-only"])
        if result.exit_code != 0:
            print(f"5. --stats-only failed: {result.output}")
            return False
        a = json.loads(run(app, ["measure", str(stats), "--json"]).stdout)
        b = json.loads(run(app, ["measure", str(features), "--json"]).stdout)
    same = close(a, b)
    print(f"5. extract --stats-only --device cuda == measure of the cuda feature file: {same}")
    return same


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    ok = correctness()
    ok &= no_sync_in_pass1()
    ok &= bad_label()
    overhead()
    ok &= stats_only()
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
