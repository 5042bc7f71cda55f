"""``extract(checkpoint, output, data, options)`` and ``extract_many(checkpoints, output, data,
options)``: the entry points of feature extraction, for the command line and for Python. Runs
in this process, or, under torchrun (WORLD_SIZE > 1 in the environment), as one rank of a
distributed run (see ``ncli.extract.distributed``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ncli.console import note
from ncli.extract.options import ExtractOptions


def extract(checkpoint, output, data, options: ExtractOptions | None = None, **changes) -> Path:
    """Extract penultimate features (or, with ``stats_only``, their statistics: a statistics
    file); returns the written path. See ``ncli extract --help``.

    ``data``: the --data items (``SPLIT=SOURCE`` or ``SOURCE``), or a dict split -> source.
    ``output``: a file, or a folder (``"runs/"``) to write ``runs/<checkpoint stem>.h5`` in.
    ``changes``: fields of ExtractOptions to set on top of ``options`` (e.g. ``arch=...``)."""
    return extract_many([checkpoint], output, data, options, **changes)[0]


def extract_many(checkpoints, output, data, options: ExtractOptions | None = None, **changes) -> list[Path]:
    """``extract`` for each checkpoint in turn, torch and the data opened once. With several
    checkpoints ``output`` is a folder (``"runs/"``: created when missing; an existing folder):
    one file each, ``<checkpoint stem>.h5``. Every output is checked before the first checkpoint
    runs; the first failure stops the run (files already written stay, nothing partial of the
    failing one is left). Returns the written paths."""
    options = replace(options or ExtractOptions(), **changes)
    from ncli.extract.distributed import extract_distributed, world_from_env
    from ncli.extract.stats_only import check_options
    from ncli.extract.targets import create_folder, plan_outputs, remove_empty_folder, report_partial

    check_options(options)
    checkpoints = list(checkpoints)
    world = world_from_env()
    if world is not None:  # the ranks check the outputs together (one error, said once)
        return extract_distributed(world, checkpoints, output, data, options)
    outs, new_folder = plan_outputs(checkpoints, output, options.force)

    from ncli.extract.job import close_sources, open_data

    sources = open_data(data, options)  # bad data is refused before a folder is created
    written: list[Path] = []
    said: set[str] = set()  # notes said once per run
    try:
        created = create_folder(new_folder, say=True) if new_folder is not None else None
        for checkpoint, out in zip(checkpoints, outs):
            try:
                written.append(_extract_one(checkpoint, out, sources, options, first=not written, said=said, several=len(outs) > 1))
            except BaseException:
                report_partial(written, outs, checkpoint)
                if created is not None and not written:
                    remove_empty_folder(new_folder, created)
                raise
    finally:
        close_sources(sources)
    return written


def _extract_one(checkpoint, out: Path, sources: list, options: ExtractOptions, *, first: bool, said: set, several: bool) -> Path:
    from ncli.extract.devices import device_note
    from ncli.extract.job import say_inferred_epoch, setup
    from ncli.extract.loop import summary, write_rows

    job = setup(checkpoint, out, None, options, verbose=True, sources=sources, data_notes=first)
    try:
        if options.progress and first:
            device_note(options.device, job.device)
        if job.attrs.get("epoch_source") and "epoch" not in said:
            say_inferred_epoch(job, several)
            said.add("epoch")
        if options.stats_only:
            from ncli.extract.stats_only import collect

            rows, elapsed = collect(job, progress=options.progress)
            if options.progress:
                summary(job, rows, elapsed, extra=" (statistics only)")
            return job.out
        written = write_rows(job, job.out, force=options.force, progress=options.progress)
        if written.nonfinite:
            note(f"{job.out}: {written.nonfinite} rows of features contain NaN or Inf (the model produced them)")
        if options.progress:
            summary(job, written.rows, written.elapsed)
        return job.out
    finally:
        job.close()
