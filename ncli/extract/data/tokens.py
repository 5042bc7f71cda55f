"""Next-token rows of a causal language model (Wu & Papyan 2024): for sequence s and position t
where the attention mask keeps both t and t+1, one row. Its feature is the input of the output
layer (``lm_head``) at (s, t), its label the token input_ids[s, t+1], its index s·L + t (L: the
sequence length), in (sequence, position) order. ``next_token_positions`` is the one rule; the
source wrapper below makes the labels and indices from it, the causal-LM extractor the features.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from ncli.errors import InputError
from ncli.extract.data.batch import BatchOut
from ncli.extract.inputs import ModelInputs


def token_ids(inputs: ModelInputs, where: str = "the data"):
    """(input_ids, attention_mask or None) of a batch: named inputs, or a tensor of token ids."""
    if isinstance(inputs, Mapping):
        ids = inputs.get("input_ids")
        if ids is None:
            raise InputError(f"{where}: a causal language model needs input_ids (the inputs are {', '.join(inputs)})")
        return ids, inputs.get("attention_mask")
    return inputs, None


def next_token_positions(ids, mask):
    """(sequence, position) index tensors of the predicted positions, in row-major order."""
    import torch

    if ids.ndim != 2:
        raise InputError(f"token ids of shape {tuple(ids.shape)}: a causal language model needs (sequences, length)")
    if mask is None:
        keep = torch.ones(ids.shape[0], max(ids.shape[1] - 1, 0), dtype=torch.bool, device=ids.device)
    else:
        keep = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
    return keep.nonzero(as_tuple=True)


class NextTokenSource:
    """A source of token sequences read as next-token rows (its own labels, if any, unused)."""

    def __init__(self, source):
        self.source = source
        self.split, self.text, self.path = source.split, source.text, getattr(source, "path", None)
        self.description = f"{source.description}, next-token rows"
        self.num_samples = source.num_samples  # sequences: what batches and torchrun shares count
        self.class_names = None

    def label_range(self):
        """The range of the token ids (every label is one of them)."""
        token_range = getattr(self.source, "token_range", None)
        return token_range() if token_range is not None else None

    def head(self, k: int):
        return self.source.head(k)

    def batches(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False, start: int = 0, stop=None) -> Iterator[BatchOut]:
        import torch

        where = f"--data {self.split}={self.text}"
        for batch in self.source.batches(batch_size, num_workers, pin_memory, start=start, stop=stop):
            ids, mask = token_ids(batch.inputs, where)
            seq, pos = next_token_positions(ids, mask)
            labels = ids[seq, pos + 1].numpy().astype(np.int64, copy=False)
            index = (torch.as_tensor(np.asarray(batch.index, dtype=np.int64))[seq] * ids.shape[1] + pos).numpy()
            yield BatchOut(batch.inputs, labels, index)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
