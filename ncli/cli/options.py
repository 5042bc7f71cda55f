"""Option types shared by several commands (declared once, used by each)."""

from __future__ import annotations

from enum import Enum


class GlobalMean(str, Enum):
    """μ_G: the mean of the class means (the paper's code) or of all samples."""

    klass = "class"
    sample = "sample"


ALLOW_EXTERNAL_HELP = (
    "Also read what an HDF5 file keeps in other files (external links, virtual datasets, external "
    "raw storage); refused by default. Only for files whose source you trust."
)


FLAG_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def refuse_flag_values(paths) -> None:
    """A flag takes no value: ``--json true`` leaves ``true`` as an input path. A missing input
    spelled like a boolean is that mistake, said as such (exit 2) rather than as a missing file."""
    import os

    from ncli.errors import UsageError

    for path in paths or ():
        text = str(path)
        if text.lower() in FLAG_WORDS and not os.path.lexists(text):
            raise UsageError(
                f"{text!r} is not a file: flags such as --json take no value (write --json, not --json {text})"
            )
