"""Run ``ncli`` under torchrun with a fault injected into one rank (for
tests/test_extract_distributed.py; never used by ncli itself):

    torchrun --nproc_per_node 2 tests/dist_fault.py RANK:WHAT extract CKPT ... -o OUT

WHAT: ``fail`` - that rank's data reads fail while it extracts its share;
      ``drop`` - that rank writes its shard and then loses it (as when OUT's folder is not on a
                 filesystem every node shares), yet reports success.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    spec, args = sys.argv[1], sys.argv[2:]
    rank, _, what = spec.partition(":")
    if os.environ.get("RANK") == rank:
        if what == "fail":
            from ncli.errors import InputError
            from ncli.extract import data

            def broken(self, batch_size, num_workers=0, pin_memory=False, start=0, stop=None):
                raise InputError(f"--data {self.split}={self.text}: cannot read rows {start}..{stop - 1} (simulated)")
                yield  # a generator, like the real one

            data.ArraySource.batches = broken
        elif what == "drop":
            from ncli.extract import loop

            write_rows = loop.write_rows

            def dropping(job, path, *a, **kw):
                res = write_rows(job, path, *a, **kw)
                Path(path).unlink()
                return res

            loop.write_rows = dropping
        else:
            raise SystemExit(f"dist_fault.py: unknown fault {spec!r}")
    from ncli.cli import app

    app(args=args, prog_name="ncli")


if __name__ == "__main__":
    main()
