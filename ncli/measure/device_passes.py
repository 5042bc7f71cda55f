"""The accumulator's batches that stay on a torch device (CUDA tensors; any tensor with
``engine="torch"``): one torch backend per device, the sums of each split kept there
(:class:`ncli.measure.engine_torch.DeviceClassSums` / ``DeviceEvaluation``) until the
accumulator flushes them into its host statistics.

Pass 1 never waits on the device: each batch's checks (non-finite features, labels out of
range) become a flag on the device, read every ``CHECK_EVERY`` batches and at every flush; a
bad label is clamped meanwhile, so it never indexes out of range. Pass 2 synchronises per
batch anyway (its decisions come to the host for the exact tie rule) and checks at once.
"""

from __future__ import annotations

import numpy as np

from ncli.features.reader import Chunk
from ncli.measure.blocks import NonFiniteFeatures
from ncli.measure.statistics import Model, SplitStatistics
from ncli.measure.user_batches import Checker, torch_of

CHECK_EVERY = 64  # device batches whose checks wait on the device before they are read


class DevicePasses:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.backends: dict = {}  # device -> TorchBackend
        self.class_sums: dict = {}  # (split, device) -> DeviceClassSums
        self.evaluations: dict = {}  # (split, device, logits given?) -> DeviceEvaluation
        self.pending: list = []  # (Checker, int8 flag on the device) of pass-1 batches
        self.failed = None  # the error of a bad batch found after its sums were added

    def backend(self, device):
        from ncli.measure.engine_torch import TorchBackend

        key = str(device)
        if key not in self.backends:
            self.backends[key] = TorchBackend(key)
        return self.backends[key]

    def update(self, features, labels, split: str, dim: int, check: Checker, rows: int) -> None:
        """Pass 1 of one batch (shapes already checked) into ``rows`` sums (C, or 1 for a
        split fed without labels)."""
        from ncli.measure.engine_torch import DeviceClassSums

        torch = torch_of(features)
        backend = self.backend(features.device)
        H = _floating(features)
        flag = (~torch.isfinite(H).all()).to(torch.int8)
        if torch_of(labels) is None:  # host labels: checked now, at no cost to the device
            y = torch.from_numpy(check.host_labels(np.asarray(labels))).to(backend.device, non_blocking=True)
        else:
            y = labels.detach().to(backend.device, non_blocking=True).long()
            flag = flag + 2 * ((y < 0) | (y >= self.num_classes)).any().to(torch.int8)
            y = y.clamp(0, self.num_classes - 1)
        key = (split, str(backend.device))
        if key not in self.class_sums:
            self.class_sums[key] = DeviceClassSums(backend, rows, dim, check=False)
        self.class_sums[key].add(Chunk(0, H, y))
        self.pending.append((check, flag))
        if len(self.pending) >= CHECK_EVERY:
            self.read_checks()

    def evaluate(self, features, labels, logits, stats: SplitStatistics, model: Model, within: bool, method: str,
                 check: Checker, decided) -> None:
        """Pass 2 of one batch against ``model``; ``decided(stats, y_net)`` wraps the split's
        statistics when the network decisions come from ``logits``."""
        from ncli.measure.engine_torch import DeviceEvaluation

        torch = torch_of(features)
        backend = self.backend(features.device)
        H = _floating(features)
        y = labels.detach() if torch_of(labels) is not None else torch.from_numpy(np.asarray(labels))
        y = y.to(backend.device).long()
        bad = (y < 0) | (y >= self.num_classes)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            raise check.fail(f"label {int(y[row])} outside [0, {self.num_classes})", row)
        if model.classes is not None:  # the class selection maps host labels (Model.select)
            y = y.cpu().numpy()
        target = stats
        if logits is not None:
            z = logits.detach() if torch_of(logits) is not None else torch.from_numpy(np.asarray(logits))
            finite = torch.isfinite(z).all(dim=1)
            if not bool(finite.all()):
                raise check.fail("logits contain NaN or Inf", int(torch.nonzero(~finite)[0]))
            target = decided(stats, model.select_decisions(z, y, lambda z: torch.argmax(z, dim=1).cpu().numpy()))
        key = (check.split, str(backend.device), logits is not None)
        if key not in self.evaluations:
            self.evaluations[key] = DeviceEvaluation(backend, model, within, method)
        try:
            self.evaluations[key].add(Chunk(0, H, y), target)
        except NonFiniteFeatures as exc:
            raise check.fail("features contain NaN or Inf", exc.row) from None

    def read_checks(self) -> None:
        """Read the pending flags (one synchronisation per device); raise for the first bad batch."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        torch = torch_of(pending[0][1])
        flags = [0] * len(pending)
        by_device: dict = {}
        for i, (_, flag) in enumerate(pending):
            by_device.setdefault(str(flag.device), []).append(i)
        for rows in by_device.values():
            for i, value in zip(rows, torch.stack([pending[i][1] for i in rows]).cpu().tolist()):
                flags[i] = value
        for (check, _), flag in zip(pending, flags):
            if flag:
                what = f"labels outside [0, {self.num_classes})" if flag & 2 else "features contain NaN or Inf"
                self.failed = check.fail(f"{what} (found on the device after the batch was added: this accumulator "
                                         "cannot be used further)")
                raise self.failed

    def flush(self, class_stats: dict, results: dict) -> None:
        """The device sums into the host statistics (after their checks), from zero again."""
        self.read_checks()
        for (split, _), sums in self.class_sums.items():
            sums.into(class_stats[split])
        for (split, _, _), evaluation in self.evaluations.items():
            evaluation.into(results[split])

    def end_pass1(self) -> None:
        self.class_sums.clear()


def _floating(features):
    features = features.detach()
    return features if features.is_floating_point() else features.double()
