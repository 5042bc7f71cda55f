"""The writer side of the loop: a batch's outputs, checked (features·Wᵀ + b against the
logits) and appended to the FeatureWriter in a background thread, in groups of about
``flush_rows`` rows; on CUDA the device-to-host copy runs on a side stream."""

from __future__ import annotations

import queue
import threading

import numpy as np


class _Buffer:
    """Groups batches into appends of about ``flush_rows`` rows (fewer HDF5 resizes)."""

    def __init__(self, writer, split: str, flush_rows: int):
        self.writer, self.split, self.flush_rows = writer, split, flush_rows
        self.parts: list[dict] = []
        self.rows = 0

    def add(self, **arrays) -> None:
        self.parts.append(arrays)
        self.rows += len(arrays["labels"])
        if self.rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        if len(self.parts) == 1:
            joined = self.parts[0]
        else:
            joined = {k: np.concatenate([p[k] for p in self.parts]) for k in ("features", "labels", "index")}
            joined["logits"] = None if self.parts[0]["logits"] is None else np.concatenate([p["logits"] for p in self.parts])
            names = self.parts[0]["layers"].keys()
            joined["layers"] = {n: np.concatenate([p["layers"][n] for p in self.parts]) for n in names}
        self.writer.append(
            self.split, features=joined["features"], labels=joined["labels"], logits=joined["logits"],
            index=joined["index"], layers=joined["layers"] or None,
        )
        self.parts, self.rows = [], 0


def host_arrays(h, z, layers: dict) -> dict:
    """A batch's outputs as numpy (synchronous copy): floats stay float32/float64, the rest
    (float16/bfloat16 under --amp) becomes float32; logits are stored as float32."""
    return {
        "features": _np_float(h),
        "logits": _np_float(z).astype(np.float32, copy=False),
        "layers": {name: _np_float(t) for name, t in layers.items()},
    }


def _np_float(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


class AsyncDeviceToHost:
    """CUDA only. Copies a batch's outputs into pinned host buffers on a side stream and
    returns at once; the writer thread waits on the copy's event before it checks and writes
    the batch. So the device-to-host copy, the checks and the HDF5 write overlap the next
    batch's host-to-device copy and forward pass, and the main thread never blocks on a copy.

    Stream rules: the side stream first waits for the compute stream (the outputs are ready
    there); ``record_stream`` tells the caching allocator that the outputs are still in use
    on the side stream, so their memory is not reused by the next forward pass before the
    copy has run. The pinned buffers stay alive as long as the numpy arrays that view them
    (the sink's bounded queue keeps that to a few batches)."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream(device=device)

    def start(self, h, z, layers: dict) -> "PendingHost":
        torch = self.torch
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        host: dict = {}
        with torch.cuda.stream(self.stream):
            items = [("features", h), ("logits", z)] + [(("layer", k), v) for k, v in layers.items()]
            for key, t in items:
                t = t.detach()
                if t.is_cuda:  # (a model may hand back a CPU tensor; its copy is then synchronous)
                    t.record_stream(self.stream)
                if key == "logits" and t.dtype != torch.float32:
                    t = t.float()  # logits are stored as float32
                elif t.dtype not in (torch.float32, torch.float64):
                    t = t.float()  # e.g. float16 under --amp, as host_arrays does
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                host[key] = buf
            done = torch.cuda.Event()
            done.record(self.stream)
        return PendingHost(done, host)


class PendingHost:
    def __init__(self, event, host: dict):
        self.event, self.host = event, host

    def wait(self) -> dict:
        self.event.synchronize()
        host = self.host
        return {
            "features": host["features"].numpy(),
            "logits": host["logits"].numpy(),
            "layers": {k[1]: v.numpy() for k, v in host.items() if isinstance(k, tuple)},
        }


_STOP = object()


class Sink(threading.Thread):
    """Checks and writes batches in a background thread, overlapping the forward passes
    (torch and numpy release the GIL). Bounded queue: memory stays a few batches."""

    def __init__(
        self, writer, W64: np.ndarray, b64: np.ndarray | None, flush_rows: int, maxsize: int = 4, threaded: bool = True,
        store_logits: bool = True,
    ):
        super().__init__(name="ncli-writer", daemon=True)
        self.writer, self.W64, self.b64, self.flush_rows = writer, W64, b64, flush_rows
        # False (a causal LM over its vocabulary): a batch's logits are those of its first rows,
        # for the check only, and are not written
        self.store_logits = store_logits
        # threaded=False: the checks and writes run inline in the caller. Better when torch
        # already uses every core: a third busy thread makes torch's OpenMP workers wait.
        self.threaded = threaded
        # Two C-level SimpleQueues instead of a queue.Queue: Ctrl-C (KeyboardInterrupt, raised
        # in the main thread between any two bytecodes) can strike inside queue.Queue's Python
        # code right after it took its lock, leaving the lock held, and cancel() then hung for
        # ever. SimpleQueue's put/get are single C calls. ``slots`` bounds the batches in flight.
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.slots: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(maxsize):
            self.slots.put(None)
        self.error: BaseException | None = None
        self.cancelled = False
        self.max_err = 0.0
        self.max_logit = 0.0
        self.nonfinite = 0
        self.buffers: dict[str, _Buffer] = {}

    def start(self) -> None:
        if self.threaded:
            super().start()

    def put(self, split: str, **arrays) -> None:
        if not self.threaded:
            self._handle(split, arrays)
            return
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.slots.get(timeout=0.2)  # a free slot (interrupted here: a slot is lost, harmless)
            except queue.Empty:
                continue
            self.q.put((split, arrays))
            return

    def _check(self, H: np.ndarray, Z: np.ndarray) -> None:
        self.nonfinite += int((~np.isfinite(H).all(axis=1)).sum())
        H = H[: len(Z)]  # the rows whose logits came along
        rec = H.astype(np.float64, copy=False) @ self.W64.T
        if self.b64 is not None:
            rec += self.b64
        diff = np.abs(rec - Z)
        finite = np.isfinite(diff)
        if finite.all():
            self.max_err = max(self.max_err, float(diff.max(initial=0.0)))
        elif finite.any():
            self.max_err = max(self.max_err, float(diff[finite].max()))
        abs_logits = np.abs(Z)
        self.max_logit = max(self.max_logit, float(abs_logits[np.isfinite(abs_logits)].max(initial=0.0)))

    def run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _STOP or self.cancelled:
                    break
                self.slots.put(None)
                self._handle(*item)
            if not self.cancelled:
                self._flush_all()
        except BaseException as exc:  # handed to the main thread
            self.error = exc

    def _handle(self, split: str, arrays: dict) -> None:
        pending = arrays.pop("pending", None)
        if pending is not None:  # CUDA: wait for this batch's device-to-host copy
            arrays.update(pending.wait())
        self._check(arrays["features"], arrays["logits"])
        if not self.store_logits:
            arrays["logits"] = None
        buf = self.buffers.get(split)
        if buf is None:
            for other in self.buffers.values():  # splits are written one after another
                other.flush()
            buf = self.buffers[split] = _Buffer(self.writer, split, self.flush_rows)
        buf.add(**arrays)

    def _flush_all(self) -> None:
        for buf in self.buffers.values():
            buf.flush()

    def finish(self) -> None:
        if not self.threaded:
            self._flush_all()
            return
        self.put_stop()
        self.join()
        if self.error is not None:
            raise self.error

    def put_stop(self) -> None:
        self.q.put(_STOP)  # never blocks: the queue itself is unbounded

    def cancel(self) -> None:
        """Stop after the batch being written (if any); queued batches are dropped."""
        self.cancelled = True
        if self.threaded and self.is_alive():
            self.put_stop()
            self.join()
