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
