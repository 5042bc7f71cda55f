"""What a data source yields: one batch of model inputs with their labels and row indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ncli.extract.inputs import ModelInputs


@dataclass
class BatchOut:
    inputs: ModelInputs  # a tensor, or named tensors (``model(**inputs)``)
    labels: np.ndarray  # int64, one per row
    index: np.ndarray  # int64: each row's position in its source, stored as /<split>/index


def row_range(num_samples: int, start: int, stop: int | None) -> tuple[int, int]:
    """``start..stop`` clipped to the source's rows (stop None: to the end)."""
    stop = num_samples if stop is None else min(int(stop), num_samples)
    start = max(0, int(start))
    return start, max(start, stop)
