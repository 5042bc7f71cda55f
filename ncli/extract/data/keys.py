"""Dataset names in array files: ``--x-key/--y-key`` patterns (``'X_{split}'``: every split
the file holds), and the hint when a name is missing but differs only in case."""

from __future__ import annotations

import re

SPLIT_FIELD = "{split}"


def is_pattern(key: str | None) -> bool:
    return key is not None and SPLIT_FIELD in key


def fill(key: str, split: str) -> str:
    return key.replace(SPLIT_FIELD, split)


def _pattern_re(key: str) -> re.Pattern:
    parts = [re.escape(part) for part in key.split(SPLIT_FIELD)]
    return re.compile("^" + "(.+)".join(parts) + "$")


def pattern_splits(names, x_key: str | None, y_key: str | None) -> list[str]:
    """The splits whose datasets a file holds for the keys (x default ``x``, y default ``y``),
    one of which has ``{split}``: every split named by the first pattern's matches whose
    other dataset is there too, in the file's order."""
    names = list(names)
    keys = [x_key or "x", y_key or "y"]
    pattern = next(key for key in keys if is_pattern(key))
    found = []
    for name in names:
        match = _pattern_re(pattern).match(name)
        if match is None or len(set(match.groups())) != 1:
            continue
        split = match.group(1)
        if all(fill(key, split) in names for key in keys) and split not in found:
            found.append(split)
    return found


def case_hint(missing: str, names) -> str:
    """``"; did you mean 'X_train'?"`` when a name in the file differs from ``missing`` only in
    case, else ``""``."""
    same = [name for name in names if name.lower() == missing.lower() and name != missing]
    return f"; did you mean {same[0]!r}? (names are case-sensitive)" if same else ""


def case_pattern_hint(names) -> str:
    """For a file without x/y or x_<split>/y_<split>: the --x-key/--y-key patterns that would
    read it when its names differ from those only in case (``X_train``, ``Y``, ...), else ``""``."""
    lowered = {name.lower(): name for name in names}
    if "x" in lowered and "y" in lowered:
        return f"the names differ only in case: --x-key {lowered['x']} --y-key {lowered['y']}"
    for name in names:
        if name.lower().startswith("x_"):
            split = name[2:]
            y_name = lowered.get(f"y_{split}".lower())
            if y_name is not None:
                return (
                    f"the names differ only in case: --x-key '{name[:2]}{SPLIT_FIELD}' --y-key "
                    f"'{y_name[:2]}{SPLIT_FIELD}' reads every split"
                )
    return ""
