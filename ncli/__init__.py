"""ncli — Neural Collapse analysis from the command line, and from a training loop.

Layout:
  ncli.measure     feature file -> metrics: the metric registry, pure math on sufficient
                   statistics, the streamed accumulators and their numpy/torch backends,
                   the measure record and its rendering; the Accumulator API and statistics files
  ncli.compare     many records side by side: loading, tables, JSON/CSV, figures
  ncli.extract     checkpoint + data -> feature file: checkpoint forms, classifier discovery,
                   data sources, the extraction loop, torchrun; capture() for a training loop
  ncli.features    format-1 HDF5 reader (validating) and atomic writer; statistics files
  ncli.cli         the typer application (thin)
  ncli.errors, ncli.console, ncli.outputs   exit codes, messages, safe output files
  ncli.interrupts  Ctrl-C over the whole process (installed by the entry points)
(README "Layout" has one line per module.)

The Python API, loaded on first use (``import ncli`` stays light and never imports torch):
  ncli.Accumulator   collapse statistics fed batch by batch (ncli.measure.accumulator)
  ncli.capture       the classifier's input and output of a torch model (ncli.extract.capture)
"""

__version__ = "0.1.0"

_LAZY = {
    "Accumulator": ("ncli.measure.accumulator", "Accumulator"),
    "capture": ("ncli.extract.capture", "capture"),
}

__all__ = ["Accumulator", "capture", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        value = getattr(import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ncli' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
