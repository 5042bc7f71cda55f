"""Zip archives (torch checkpoints, ``.npz`` data) checked before anything in them is
decompressed.

The readers (torch's, zipfile's) decompress no more than a member's declared size; what is
checked here is that the declared sizes are possible: every member stored or deflated (the
methods torch and numpy write), a deflated member expanding at most ``MAX_EXPANSION`` times
(deflate's limit is 1032:1, so a larger claim is a lie or damage), and no two members sharing
bytes (the "overlapping" zip bomb, where many entries decompress one small kernel). A valid
archive can still expand about a thousandfold in memory: a compressed checkpoint or ``.npz``
needs the memory of what it declares (README, "Not in scope").
"""

from __future__ import annotations

import os
import zipfile

MAX_EXPANSION = 1100
LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def zip_problem(path: str | os.PathLike) -> str | None:
    """Why the zip archive at ``path`` is refused, or None (also None when it is no zip at all:
    the caller's reader reports that)."""
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return None
    spans = []
    for info in members:
        name = info.filename
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return f"member {name!r} uses compression method {info.compress_type}; ncli reads stored or deflated members"
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            return f"member {name!r} is stored but declares {info.file_size} bytes in {info.compress_size}"
        if info.file_size > MAX_EXPANSION * info.compress_size + 1024:
            return (f"member {name!r} declares {info.file_size} bytes from {info.compress_size} compressed, more than "
                    "deflate can expand (a zip bomb?)")
        start = info.header_offset
        spans.append((start, start + LOCAL_HEADER + len(name.encode()) + info.compress_size, name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            return f"members {first!r} and {second!r} overlap (a zip bomb?)"
    if spans and spans[-1][1] > size:
        return f"member {spans[-1][2]!r} reaches beyond the end of the file (truncated?)"
    return None
