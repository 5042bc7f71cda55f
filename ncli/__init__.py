"""ncli — Neural Collapse analysis from the command line.

Layout:
  ncli.metrics     pure math on sufficient statistics (numpy only)
  ncli.stream      streaming accumulation of those statistics over feature files
  ncli.features    format-1 HDF5 reader (validating) and atomic writer
  ncli.measure     measure a file: stream -> metrics -> JSON-able record
  ncli.report      rich table / JSON rendering of records
  ncli.cli         the typer application (thin)
"""

__version__ = "0.1.0"
