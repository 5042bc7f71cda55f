"""The ``ncli`` command line (typer). Thin: parse options, call the library, render.

  app      the typer app, root options (--version, --debug), the shared error policy
  options  option types shared by several commands
  measure, compare, extract   one module per command (extract also holds inspect)

Command modules import typer and the standard library at top level only; the work (numpy,
h5py, torch, matplotlib) is imported inside the command, so each command loads only what it
uses (``ncli measure`` never imports torch).
"""

# importing a command module registers its commands; this order is the order of --help
from ncli.cli import extract  # noqa: F401,I001
from ncli.cli import measure  # noqa: F401
from ncli.cli import compare  # noqa: F401
from ncli.cli.app import app, reports_errors


def main() -> None:
    """The process entry point (also reached through ``python -m ncli``)."""
    from ncli import interrupts

    interrupts.install()
    app()


__all__ = ["app", "main", "reports_errors"]
