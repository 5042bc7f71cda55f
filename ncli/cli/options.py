"""Option types shared by several commands (declared once, used by each)."""

from __future__ import annotations

from enum import Enum


class GlobalMean(str, Enum):
    """μ_G: the mean of the class means (the paper's code) or of all samples."""

    klass = "class"
    sample = "sample"
