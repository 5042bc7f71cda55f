"""The extraction loop: sources -> model -> FeatureWriter (temp file + rename, abort on error
or Ctrl-C). Memory does not grow with the dataset: batches are written as they come (in
groups of about ``flush_rows`` rows, to keep HDF5 appends few)."""

from __future__ import annotations

import json
import platform
import os
import queue
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncli.console import note
from ncli.errors import EnvironmentProblem, InputError, UsageError
from ncli.features.writer import FeatureWriter
from ncli.outputs import check_output_path


def resolve_device(spec: str):
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"--device {spec}: CUDA is not available (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'none: a CPU-only build'}); use --device cpu, or --device auto to use the best device there is"
            )
        if ":" in spec:
            try:
                i = int(spec.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {spec}: expected cuda or cuda:INDEX") from None
            if not 0 <= i < torch.cuda.device_count():
                raise EnvironmentProblem(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
        return torch.device(spec)
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EnvironmentProblem("--device mps: Apple MPS is not available here; use --device cpu or --device auto")
        return torch.device("mps")
    raise UsageError(f"--device {spec}: expected auto, cpu, cuda, cuda:INDEX or mps")


def autocast_context(device, amp: bool):
    import torch

    if not amp:
        return nullcontext(), None
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), str(dtype).replace("torch.", "")


@dataclass
class Prepared:
    ckpt: Any
    extractor: Any
    load_info: dict = field(default_factory=dict)
    model: Any = None


def prepare(checkpoint, *, arch=None, arch_args=None, ema=False, trust=False, classifier=None, layers=(), pool="none", amp=False) -> Prepared:
    """Load the checkpoint (and --arch model) and set up the extractor (no forward pass yet)."""
    from ncli.extract.arch import build_model
    from ncli.extract.checkpoint import load_checkpoint, load_into, weights_of
    from ncli.extract.discover import make_extractor

    ckpt = load_checkpoint(checkpoint, trust=trust, ema=ema)
    model = None
    info: dict = {}
    if arch:
        model = build_model(arch, arch_args)
        info = load_into(model, weights_of(ckpt), path=str(checkpoint), arch=arch)
        model.eval()
    ex = make_extractor(ckpt, model, classifier=classifier, layers=layers, pool=pool, amp=amp)
    return Prepared(ckpt, ex, info, model)


def _to_device(x, device, dtype):
    import torch

    if x.is_floating_point():
        return x.to(device=device, dtype=dtype, non_blocking=True)
    return x.to(device=device, dtype=torch.long, non_blocking=True)


def _np_float(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


class _Buffer:
    """Groups batches into appends of about ``flush_rows`` rows (fewer HDF5 resizes)."""

    def __init__(self, writer, split: str, flush_rows: int):
        self.w, self.split, self.flush_rows = writer, split, flush_rows
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
            d = self.parts[0]
        else:
            d = {k: np.concatenate([p[k] for p in self.parts]) for k in ("features", "labels", "logits", "index")}
            names = self.parts[0]["layers"].keys()
            d["layers"] = {n: np.concatenate([p["layers"][n] for p in self.parts]) for n in names}
        self.w.append(self.split, features=d["features"], labels=d["labels"], logits=d["logits"], index=d["index"], layers=d["layers"] or None)
        self.parts, self.rows = [], 0


class _AsyncDeviceToHost:
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

    def start(self, h, z, layers: dict) -> "_PendingHost":
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
                    t = t.float()  # e.g. float16 under --amp, as _np_float does on the CPU path
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                host[key] = buf
            done = torch.cuda.Event()
            done.record(self.stream)
        return _PendingHost(done, host)


class _PendingHost:
    def __init__(self, event, host: dict):
        self.event, self.host = event, host

    def wait(self) -> dict:
        self.event.synchronize()
        h = self.host
        return {
            "features": h["features"].numpy(),
            "logits": h["logits"].numpy(),
            "layers": {k[1]: v.numpy() for k, v in h.items() if isinstance(k, tuple)},
        }


_STOP = object()


class _Sink(threading.Thread):
    """Checks and writes batches in a background thread, overlapping the forward passes
    (torch and numpy release the GIL). Bounded queue: memory stays a few batches."""

    def __init__(
        self, writer, W64: np.ndarray, b64: np.ndarray | None, flush_rows: int, maxsize: int = 4, threaded: bool = True
    ):
        super().__init__(name="ncli-writer", daemon=True)
        self.w, self.W64, self.b64, self.flush_rows = writer, W64, b64, flush_rows
        # threaded=False: the checks and writes run inline in the caller. Better when torch
        # already uses every core: a third busy thread makes torch's OpenMP workers wait
        # (measured on 2 cores, tiny MLP: 0.74-0.82x of the bare loop threaded, 0.86-0.88x inline).
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
        rec = H.astype(np.float64, copy=False) @ self.W64.T
        if self.b64 is not None:
            rec += self.b64
        diff = np.abs(rec - Z)
        fin = np.isfinite(diff)
        if fin.all():
            self.max_err = max(self.max_err, float(diff.max(initial=0.0)))
        elif fin.any():
            self.max_err = max(self.max_err, float(diff[fin].max()))
        zf = np.abs(Z)
        self.max_logit = max(self.max_logit, float(zf[np.isfinite(zf)].max(initial=0.0)))
        self.nonfinite += int((~np.isfinite(H).all(axis=1)).sum())

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

    def _handle(self, split: str, a: dict) -> None:
        pending = a.pop("pending", None)
        if pending is not None:  # CUDA: wait for this batch's device-to-host copy
            a.update(pending.wait())
        self._check(a["features"], a["logits"])
        buf = self.buffers.get(split)
        if buf is None:
            for other in self.buffers.values():  # splits are written one after another
                other.flush()
            buf = self.buffers[split] = _Buffer(self.w, split, self.flush_rows)
        buf.add(**a)

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


class _InterruptGuard:
    """While the output is open, a Ctrl-C is never lost.

    Python raises KeyboardInterrupt at the next bytecode of the main thread. If that bytecode
    is in a ``__del__`` or a weakref callback run by the garbage collector, Python only prints
    "Exception ignored" and the run goes on to write a complete file (seen: 1 kill test in
    ~10 under load). This guard's handler raises as usual and also sets a flag, and
    :meth:`check` (after every batch, and before the file is committed) raises again; the
    swallowed interrupt is not printed (it is not lost). It is installed only in the main
    thread, and only over Python's default handler: an ignored SIGINT (a background job)
    stays ignored.
    """

    def __init__(self):
        self.hit = False
        self._old = None
        self._old_hook = None

    def __enter__(self) -> "_InterruptGuard":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._old_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, info) -> None:
        if not (self.hit and info.exc_type is KeyboardInterrupt):  # ours: check() raises it again
            self._old_hook(info)

    def _handler(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            sys.unraisablehook = self._old_hook


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            s = task.finished_speed or task.speed
            return Text("      ? samples/s" if s is None else f"{s:9,.0f} samples/s", style="progress.data.speed")

    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
    )


@dataclass
class Job:
    """Everything set up before the first forward pass (shared by the single-process run and
    each torchrun rank): output path, opened sources, the model on its device, provenance."""

    out: Path
    checkpoint: Any
    sources: list
    dev: Any
    prep: Prepared
    ctx: Any
    bs: int
    num_classes: int
    feature_dim: int
    weight: np.ndarray
    bias: np.ndarray | None
    class_names: list | None
    attrs: dict

    @property
    def extractor(self):
        return self.prep.extractor

    def close(self) -> None:
        try:
            self.prep.extractor.close()
        finally:
            close_sources(self.sources)


def close_sources(sources) -> None:
    for s in sources:
        close = getattr(s, "close", None)
        if close is not None:
            close()


@dataclass
class Written:
    """What one extraction pass wrote (the summary, and the distributed run's aggregation)."""

    path: Path
    rows: int
    elapsed: float
    max_err: float
    max_logit: float
    nonfinite: int


def setup(
    checkpoint, output, data, *, arch=None, arch_args=None, ema=False, trust=False, epoch=None, step=None,
    classifier=None, layers=(), pool="none", x_key=None, y_key=None, image_size=None, normalize=None,
    batch_size=256, num_workers=0, device="auto", amp=False, force=False, verbose=True,
) -> Job:
    """Checks, sources, model and classifier discovery: everything before the loop. Checks the
    output path first (before any work). ``verbose``: print notes (rank 0 only under torchrun)."""
    out = check_output_path(output, force)  # before any work
    ckpt_path = Path(checkpoint)
    if ckpt_path.exists() and out.exists() and out.resolve() == ckpt_path.resolve():
        raise UsageError(f"{out}: the output would replace the checkpoint itself")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if num_workers < 0:
        raise UsageError(f"--num-workers {num_workers}: must be 0 or more")
    if isinstance(data, dict):
        data = [f"{k}={v}" for k, v in data.items()]
    from ncli.extract.data import open_sources

    sources = open_sources(list(data), x_key=x_key, y_key=y_key, image_size=image_size, normalize=normalize)
    ex = None
    try:
        for s in sources:
            if getattr(s, "path", None) is not None and out.exists() and Path(s.path).resolve() == out.resolve():
                raise UsageError(f"{out}: the output would replace the data file {s.path}")
        dev = resolve_device(device)

        import torch

        prep = prepare(checkpoint, arch=arch, arch_args=arch_args, ema=ema, trust=trust, classifier=classifier, layers=layers, pool=pool, amp=amp)
        ckpt, ex = prep.ckpt, prep.extractor
        ex.to(dev)
        ctx, amp_dtype = autocast_context(dev, amp)
        bs = batch_size
        if ex.fixed_batch is not None and ex.fixed_batch != batch_size:
            if verbose:
                note(f"{checkpoint} was exported for batches of exactly {ex.fixed_batch}; using --batch-size {ex.fixed_batch}")
            bs = ex.fixed_batch
        with torch.inference_mode(), ctx:
            first = sources[0].head(min(8, bs))
            ex.discover(_to_device(first, dev, ex.dtype))
        C, p = ex.num_classes, ex.feature_dim
        if C < 1:
            raise InputError(f"{checkpoint}: the classifier has no outputs")
        for s in sources:
            rng = s.label_range()
            if rng is not None and (rng[0] < 0 or rng[1] >= C):
                bad = rng[1] if rng[1] >= C else rng[0]
                raise InputError(
                    f"--data {s.split}={s.text}: label {bad} is outside the model's {C} classes "
                    f"(classifier {ex.classifier!r} has {C} outputs; labels must be in [0, {C}))"
                )

        if verbose and epoch is not None and ckpt.epoch is not None and epoch != ckpt.epoch:
            note(f"--epoch {epoch} overrides the checkpoint's epoch {ckpt.epoch}")
        if verbose and step is not None and ckpt.step is not None and step != ckpt.step:
            note(f"--step {step} overrides the checkpoint's step {ckpt.step}")
        W = ex.weight.detach()
        b = None if ex.bias is None else ex.bias.detach()
        attrs = {
            "epoch": epoch if epoch is not None else ckpt.epoch,
            "step": step if step is not None else ckpt.step,
            "feature_layer": ex.classifier,
            "source_checkpoint": str(checkpoint),
            "source_checkpoint_sha256": ckpt.sha256,
            "checkpoint_form": ckpt.form,
            "checkpoint_key": ckpt.container_key,
            "arch": arch,
            "arch_args": json.dumps(arch_args, sort_keys=True, default=str) if arch_args else None,
            "ema": bool(ema),
            "stripped_prefixes": "".join(prep.load_info.get("stripped_prefixes", [])) or None,
            "dropped_keys": len(prep.load_info.get("dropped_keys", [])) or None,
            "classifier_found_by": ex.found_by,
            "extractor": ex.kind,
            "torch_version": str(torch.__version__),
            "numpy_version": str(np.__version__),
            "python_version": platform.python_version(),
            "device": str(dev),
            "dtype": str(ex.dtype).replace("torch.", ""),
            "amp": amp_dtype or "off",
            "batch_size": int(bs),
            "data_sources": json.dumps({s.split: s.description for s in sources}, sort_keys=True),
            "layers": json.dumps(list(layers)) if layers else None,
            "layer_pool": pool if layers else None,
            "world_size": 1,
        }
        if ex.kind == "torchscript":
            attrs["first_batch_model_output_error"] = float(ex.first_batch_error or 0.0)
        attrs = {k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items()}
        names = [s.class_names for s in sources if getattr(s, "class_names", None)]
        class_names = names[0] if names and all(n == names[0] for n in names) and len(names[0]) == C else None
        return Job(
            out=out, checkpoint=checkpoint, sources=sources, dev=dev, prep=prep, ctx=ctx, bs=bs, num_classes=C,
            feature_dim=p, weight=W.cpu().numpy(), bias=None if b is None else b.cpu().numpy(),
            class_names=class_names, attrs=attrs,
        )
    except BaseException:
        if ex is not None:
            ex.close()
        close_sources(sources)
        raise


def write_rows(
    job: Job, path: Path, rows: dict[str, tuple[int, int]] | None = None, *, force: bool = False,
    compression: str | None = None, progress: bool = True, flush_rows: int = 8192, num_workers: int = 0,
    extra_attrs: dict | None = None, progress_label: str = "",
) -> Written:
    """Run the model over each source's rows ``rows[split] = (start, stop)`` (default: all) and
    write them to ``path`` with a FeatureWriter (temp file + rename; abort on error or Ctrl-C).
    A split whose range is empty is written with zero rows when nothing else is (a torchrun
    rank with no work still leaves a complete shard)."""
    import torch

    ex, dev, C, ctx, bs = job.extractor, job.dev, job.num_classes, job.ctx, job.bs
    W64 = job.weight.astype(np.float64)
    b64 = None if job.bias is None else job.bias.astype(np.float64)
    ranges = {s.split: (rows or {}).get(s.split, (0, s.num_samples)) for s in job.sources}
    attrs = dict(job.attrs, **(extra_attrs or {}))
    # Everything imported lazily (rich's progress bar) is imported before the output file is
    # opened: a Ctrl-C that lands inside CPython's eval of a string (namedtuple creation during
    # an import) makes the interpreter re-raise SIGINT at exit even when the interrupt is
    # handled, so a run interrupted while writing could end by signal instead of exit 130.
    bar_cm = _progress(progress)
    interrupt = _InterruptGuard()  # from before the temporary file exists until it is committed
    with interrupt, FeatureWriter(path, num_classes=C, force=force, attrs=attrs, compression=compression) as w:
        w.set_classifier(job.weight, job.bias)
        if job.class_names is not None:
            w.set_class_names(job.class_names)
        cuda = dev.type == "cuda"
        d2h = _AsyncDeviceToHost(dev) if cuda else None
        t0 = time.perf_counter()
        total = 0
        # inline checks/writes when torch already keeps every CPU busy (no core to spare)
        spare_core = dev.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)
        sink = _Sink(w, W64, b64, max(flush_rows, bs), threaded=spare_core)
        sink.start()
        try:
            with bar_cm as bar, torch.inference_mode(), ctx:
                for s in job.sources:
                    start, stop = ranges[s.split]
                    if stop <= start:
                        continue
                    task = bar.add_task(s.split + progress_label, total=stop - start)
                    for batch in s.batches(bs, num_workers, cuda, start=start, stop=stop):
                        y = batch.y
                        if y.size and (y.min() < 0 or y.max() >= C):
                            i = int(np.argmax((y < 0) | (y >= C)))
                            raise InputError(
                                f"--data {s.split}={s.text}: row {int(batch.index[i])}: label {int(y[i])} outside the model's {C} classes"
                            )
                        x = batch.x
                        if cuda and not x.is_pinned():
                            x = x.pin_memory()  # so the host-to-device copy below is asynchronous
                        h, z, lay = ex(_to_device(x, dev, ex.dtype))
                        if d2h is not None:
                            sink.put(s.split, pending=d2h.start(h, z, lay), labels=y, index=batch.index)
                        else:
                            sink.put(
                                s.split, features=_np_float(h), labels=y, logits=_np_float(z).astype(np.float32, copy=False),
                                index=batch.index, layers={k: _np_float(v) for k, v in lay.items()},
                            )
                        bar.advance(task, len(y))
                        total += len(y)
                        interrupt.check()
                sink.finish()
        except BaseException:
            sink.cancel()  # stop writing before the writer removes the temporary file
            raise
        if total == 0:  # only a torchrun rank whose share is empty
            feat_dtype = np.float64 if str(ex.dtype) == "torch.float64" else np.float32
            s0 = job.sources[0].split
            w.append(
                s0, features=np.zeros((0, job.feature_dim), feat_dtype), labels=np.zeros(0, np.int64),
                logits=np.zeros((0, C), np.float32), index=np.zeros(0, np.int64),
            )
        elapsed = time.perf_counter() - t0
        w.set_attrs(
            max_reconstruction_error=float(sink.max_err),
            max_abs_logit=float(sink.max_logit),
            nonfinite_feature_rows=int(sink.nonfinite),
        )
        interrupt.check()  # the last moment before the file is committed
    return Written(Path(path), total, elapsed, float(sink.max_err), float(sink.max_logit), int(sink.nonfinite))


def device_note(spec: str | None, dev) -> None:
    """Say which device ``--device auto`` picked (stderr)."""
    if (spec or "auto").strip().lower() == "auto":
        why = "" if dev.type != "cpu" else " (no CUDA or MPS device found)"
        note(f"--device auto: using {dev}{why}")


def summary(job: Job, rows: int, elapsed: float, extra: str = "") -> None:
    ex = job.extractor
    note(
        f"wrote {job.out}: {rows} samples, p = {job.feature_dim}, C = {job.num_classes}, classifier {ex.classifier!r}, "
        f"{rows / max(elapsed, 1e-9):,.0f} samples/s{extra}"
    )


def extract(
    checkpoint,
    output,
    data,
    *,
    arch: str | None = None,
    arch_args: dict | None = None,
    ema: bool = False,
    trust: bool = False,
    epoch: int | None = None,
    step: int | None = None,
    classifier: str | None = None,
    layers=(),
    pool: str = "none",
    x_key: str | None = None,
    y_key: str | None = None,
    image_size: int | None = None,
    normalize: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "auto",
    amp: bool = False,
    force: bool = False,
    compression: str | None = None,
    progress: bool = True,
    flush_rows: int = 8192,
) -> Path:
    """Extract penultimate features; returns the written path. See ``ncli extract --help``.

    Under torchrun (WORLD_SIZE > 1 in the environment) every process runs this same call: each
    extracts its share of the batches into a shard and rank 0 assembles OUTPUT (see
    ``ncli.extract.distributed``)."""
    if compression in ("none", ""):
        compression = None
    options = dict(
        arch=arch, arch_args=arch_args, ema=ema, trust=trust, epoch=epoch, step=step, classifier=classifier,
        layers=layers, pool=pool, x_key=x_key, y_key=y_key, image_size=image_size, normalize=normalize,
        batch_size=batch_size, num_workers=num_workers, device=device, amp=amp, force=force,
    )
    from ncli.extract.distributed import extract_distributed, world_from_env

    world = world_from_env()
    if world is not None:
        return extract_distributed(
            world, checkpoint, output, data, options, compression=compression, progress=progress, flush_rows=flush_rows
        )
    job = setup(checkpoint, output, data, verbose=True, **options)
    try:
        if progress:
            device_note(device, job.dev)
        written = write_rows(
            job, job.out, force=force, compression=compression, progress=progress, flush_rows=flush_rows, num_workers=num_workers
        )
        if written.nonfinite:
            note(f"{job.out}: {written.nonfinite} rows of features contain NaN or Inf (the model produced them)")
        if progress:
            summary(job, written.rows, written.elapsed)
        return job.out
    finally:
        job.close()
