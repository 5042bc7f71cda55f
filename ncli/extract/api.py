"""``extract(checkpoint, output, data, options)``: the one entry point of feature extraction,
for the command line and for Python. Runs in this process, or, under torchrun (WORLD_SIZE > 1
in the environment), as one rank of a distributed run (see ``ncli.extract.distributed``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ncli.console import note
from ncli.extract.options import ExtractOptions


def extract(checkpoint, output, data, options: ExtractOptions | None = None, **changes) -> Path:
    """Extract penultimate features (or, with ``stats_only``, their statistics: a statistics
    file); returns the written path. See ``ncli extract --help``.

    ``data``: the --data items (``SPLIT=SOURCE`` or ``SOURCE``), or a dict split -> source.
    ``changes``: fields of ExtractOptions to set on top of ``options`` (e.g. ``arch=...``)."""
    options = replace(options or ExtractOptions(), **changes)
    from ncli.extract.distributed import extract_distributed, world_from_env
    from ncli.extract.stats_only import check_options

    check_options(options)

    world = world_from_env()
    if world is not None:
        return extract_distributed(world, checkpoint, output, data, options)
    from ncli.extract.devices import device_note
    from ncli.extract.job import setup
    from ncli.extract.loop import summary, write_rows

    job = setup(checkpoint, output, data, options, verbose=True)
    try:
        if options.progress:
            device_note(options.device, job.device)
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
