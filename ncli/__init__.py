"""ncli — Neural Collapse analysis from the command line.

Layout:
  ncli.measure     feature file -> metrics: the metric registry, pure math on sufficient
                   statistics, the streamed accumulators and their numpy/torch backends,
                   the measure record and its rendering
  ncli.compare     many records side by side: loading, tables, JSON/CSV, figures
  ncli.extract     checkpoint + data -> feature file: checkpoint forms, classifier discovery,
                   data sources, the extraction loop, torchrun
  ncli.features    format-1 HDF5 reader (validating) and atomic writer
  ncli.cli         the typer application (thin)
  ncli.errors, ncli.console, ncli.outputs   exit codes, messages, safe output files
  ncli.interrupts  Ctrl-C over the whole process (installed by the entry points)
(README "Layout" has one line per module.)
"""

__version__ = "0.1.0"
