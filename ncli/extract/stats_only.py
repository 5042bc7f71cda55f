"""``ncli extract --stats-only``: the run's statistics file instead of its features.

The model runs over the data twice, feeding an :class:`ncli.measure.accumulator.Accumulator`
(the engine ``ncli measure`` uses): pass 1 over the split that defines the metrics (class
counts and sums), pass 2 over every split (decisions, and the within-class sums of the
defining split). On a GPU the features stay there; only statistics move. The accumulator
works inline, between forward passes: a few hundred µs per batch (benchmarks/README.md; a
thread of its own measured slower, its hand-offs cost as much as it hid). The output is a
statistics file (``docs/format.md``) whose size depends on C and p, not on the number of
samples, and ``ncli measure`` of it equals ``ncli measure`` of the feature file the same run
would write.

Under torchrun each rank runs its share (the batches it would extract,
:func:`ncli.extract.shards.share`) and the ranks sum their statistics after each pass
(``Accumulator.all_reduce``: in rank order, so the result does not depend on timing); rank 0
writes the file. Failures are agreed on after every step, as in the feature-file run.
"""

from __future__ import annotations

import time
from typing import Callable

from ncli.errors import InputError, UsageError
from ncli.extract.options import ExtractOptions


def check_options(options: ExtractOptions) -> None:
    """Options that need --stats-only, and options that do not apply with it: one line each."""
    if not options.stats_only:
        given_flags = ((options.stats_split, "--split"), (options.global_mean, "--global-mean"),
                       (options.min_per_class, "--min-per-class"), (options.ood, "--ood"))
        for given, flag in given_flags:
            if given is not None:
                raise UsageError(f"{flag} applies with --stats-only (a feature file is measured with `ncli measure {flag}`)")
        return
    if options.layers:
        raise UsageError("--layer does not apply with --stats-only: a statistics file holds the penultimate features' statistics only")
    if options.compression is not None:
        raise UsageError("--compression does not apply with --stats-only: a statistics file is a few small arrays")


def collect(job, *, progress: bool, world=None, agree: Callable | None = None) -> tuple[int, float]:
    """Run both passes and write the statistics file at ``job.out`` (rank 0 under torchrun,
    where ``world`` and ``agree(phase, error)`` come from :mod:`ncli.extract.distributed`).
    Returns (rows evaluated in pass 2, by all processes; seconds)."""
    from ncli.extract.interrupt import InterruptGuard
    from ncli.extract.loop import progress_bar, share_label
    from ncli.extract.shards import share

    options = job.options
    train_split = options.stats_split or "train"
    sources = {s.split: s for s in job.sources}
    lead = world is None or world.rank == 0
    ranges = {
        name: (0, s.num_samples) if world is None else share(s.num_samples, job.batch_size, world.rank, world.world_size)
        for name, s in sources.items()
    }

    def step(phase: str, work: Callable) -> None:
        if agree is None:
            work()
            return
        error = None
        try:
            work()
        except BaseException as exc:
            error = exc
        agree(phase, error)

    ood = options.ood
    evaluated = [name for name in sources if name != ood]
    made: list = []
    step("statistics setup", lambda: made.append(_accumulator(job, train_split, sources, world)))
    acc = made[0]
    label = share_label(world.world_size) if world is not None else ""

    bar_context = progress_bar(progress)
    t0 = time.perf_counter()
    with InterruptGuard() as interrupt, bar_context as bar:
        rows = [0]  # rows fed to pass 2 here (a causal LM's token rows, not its sequences)

        def run_pass(names, feed, suffix: str, count: bool = False) -> None:
            for name in names:
                fed = _run_split(job, sources[name], ranges[name], feed, bar, name + suffix + label, interrupt,
                                 labelled=name != ood)
                rows[0] += fed if count else 0

        def unlabelled(features, _labels, split):  # the OOD split: one sum, its labels ignored
            acc.update(features, None, split=split)

        step("pass 1", lambda: run_pass([train_split], acc.update, " (pass 1)"))
        if ood is not None:
            step("pass 1 (ood)", lambda: run_pass([ood], unlabelled, " (pass 1, out of distribution)"))
        if world is not None:
            step("pass 1 reduction", acc.all_reduce)
        step("pass 2", lambda: run_pass(evaluated, acc.evaluate, "", count=True))
        if world is not None:
            step("pass 2 reduction", acc.all_reduce)
        interrupt.check()
        step("save", lambda: acc.save(job.out, force=options.force) if lead else None)
    total = rows[0] if world is None else sum(sources[name].num_samples for name in evaluated)
    return total, time.perf_counter() - t0


def _accumulator(job, train_split: str, sources: dict, world):
    from ncli.measure.accumulator import Accumulator

    if train_split not in sources:
        raise UsageError(f"--split {train_split}: no such split in --data ({', '.join(sources)}); it defines the metrics")
    ood = job.options.ood
    if ood is not None and ood not in sources:
        raise UsageError(f"--ood {ood}: no such split in --data ({', '.join(sources)})")
    if ood == train_split:
        raise UsageError(f"--ood {ood}: the out-of-distribution split cannot be the split that defines the metrics")
    attrs = {k: v for k, v in job.attrs.items() if k not in ("epoch", "step", "feature_layer")}
    if world is not None:
        attrs.update(
            world_size=world.world_size,
            distributed=f"torchrun: {world.world_size} processes, each a contiguous block of batches, statistics summed in rank order",
        )
    return Accumulator(
        job.num_classes, W=job.weight, b=job.bias, train_split=train_split, global_mean=job.options.global_mean or "class",
        min_per_class=job.options.min_per_class, class_names=job.class_names, name=str(job.out), epoch=job.attrs.get("epoch"), step=job.attrs.get("step"),
        layer=job.attrs.get("feature_layer"), attrs=attrs,
    )


def _run_split(job, source, rows: tuple[int, int], feed: Callable, bar, label: str, interrupt, labelled: bool = True) -> int:
    """The model over ``source``'s rows ``rows``, each batch's features fed to ``feed``
    (``acc.update`` or ``acc.evaluate``) as it comes; ``labelled``: the labels are checked
    against the model's classes. The rows are the model's (a causal LM's: one per predicted
    token, labelled by :class:`ncli.extract.data.tokens.NextTokenSource`), as in a feature
    file. Returns the number of rows fed."""
    import torch

    from ncli.extract.inputs import batch_len, pin_memory, to_device
    from ncli.extract.loop import check_labels
    from ncli.measure.user_batches import BatchError

    start, stop = rows
    if stop <= start:
        return 0
    fed = 0
    cuda = job.device.type == "cuda"
    task = bar.add_task(label, total=stop - start)
    with torch.inference_mode(), job.autocast:
        for batch in source.batches(job.batch_size, job.options.num_workers, cuda, start=start, stop=stop):
            if labelled:
                check_labels(source, batch, job.num_classes)
            inputs = pin_memory(batch.inputs) if cuda else batch.inputs
            features, _, _ = job.extractor(to_device(inputs, job.device, job.extractor.dtype))
            try:
                feed(features, batch.labels, split=source.split)
            except BatchError as exc:
                if exc.row is None:  # found later on the device: the accumulator's words name the batch
                    raise InputError(f"--data {source.split}={source.text}: {exc}") from None
                raise InputError(
                    f"--data {source.split}={source.text}: row {int(batch.index[exc.row])}: {exc.reason} "
                    "(the model produced them; a statistics file cannot hold them)"
                ) from None
            fed += len(batch.labels)
            bar.advance(task, batch_len(batch.inputs))  # source rows (a causal LM's sequences), as the bar's total
            interrupt.check()
    return fed
