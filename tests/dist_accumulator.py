"""``Accumulator.all_reduce`` under torchrun (for tests/test_extract_stats_only.py; never used
by ncli itself):

    torchrun --nproc_per_node 2 tests/dist_accumulator.py CASE OUT_DIR

CASE ``ok``: each rank feeds an uneven share of the rows (rank 1 none of the test split), the
ranks all-reduce after each pass, and every rank writes its record and a digest of its
statistics to OUT_DIR/rank<r>.json. ``p`` / ``frozen``: rank 1 differs (its features have one
column fewer / it evaluates before the pass-1 reduction); every rank writes the error it got.
``selection``: as ``ok`` with ``min_per_class=MIN_PER_CLASS`` (class 3 is rare: left out) and
an out-of-distribution split fed without labels by rank 0 only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

import ncli
from ncli.errors import NcliError

C, P = 4, 6
MIN_PER_CLASS = 50


def selection_labels(y):
    """Class 3 kept in its first 10 rows only (the others become class 2)."""
    rare = np.flatnonzero(y == 3)[10:]
    y = y.copy()
    y[rare] = 2
    return y


def data():
    rng = np.random.default_rng(7)
    means = rng.standard_normal((C, P)) * 3
    y = rng.permutation(np.arange(900) % C)
    H = (means[y] + rng.standard_normal((900, P))).astype(np.float32)
    yt = rng.integers(0, C, 300)
    Ht = (means[yt] + rng.standard_normal((300, P))).astype(np.float32)
    W, b = rng.standard_normal((C, P)), rng.standard_normal(C)
    owner = rng.choice(2, size=900, p=[0.3, 0.7])
    return H, y, Ht, yt, W, b, owner


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    H, y, Ht, yt, W, b, owner = data()
    selection = case == "selection"
    if selection:
        y = selection_labels(y)
    acc = ncli.Accumulator(C, W=W if case != "p" else None, b=b,  # (a classifier fixes p)
                           min_per_class=MIN_PER_CLASS if selection else None)
    mine = np.flatnonzero(owner == rank)
    result = {}
    try:
        features = H[mine] if not (case == "p" and rank == 1) else H[mine][:, 1:]
        for rows in np.array_split(np.arange(len(mine)), 3):
            acc.update(features[rows], y[mine][rows])
        if selection and rank == 0:
            acc.update(Ht + 1.0, None, split="ood")
        if case == "frozen" and rank == 1:
            acc.evaluate(H[mine], y[mine])
        acc.all_reduce()
        digest = hashlib.sha256(acc.class_stats["train"].sums.tobytes()).hexdigest()
        acc.evaluate(H[mine], y[mine])
        if rank == 0:
            acc.evaluate(Ht, yt, split="test")
        acc.all_reduce()
        result = {"record": acc.measure(per_class=True, ood="ood" if selection else None), "pass1": digest,
                  "within": acc.results["train"].ss_within.tolist()}
    except NcliError as exc:
        result = {"error": str(exc)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
