"""Hostile and damaged statistics files get what feature files get (issue 15): nothing is read
from other files without --allow-external (external links, virtual datasets, external raw
storage, a FIFO among them), soft-link loops and datasets claiming more than they store are
refused, only a regular file is opened; every refusal is one line, exit 3, and the file is left
as it was. Byte flips anywhere give a clean error or the record of what the file now holds."""

from __future__ import annotations

import hashlib
import json
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ncli
from ncli.cli import app
from ncli.errors import InputError

runner = CliRunner()
C, P = 4, 5
SETTINGS = settings(max_examples=int(os.environ.get("NCLI_FUZZ_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _statistics_file(path, seed=0, nc1_method="project"):
    rng = np.random.default_rng(seed)
    y = np.arange(120) % C
    H = (np.eye(C, P)[y] * 4 + rng.standard_normal((120, P))).astype(np.float32)
    acc = ncli.Accumulator(C, W=rng.standard_normal((C, P)), b=rng.standard_normal(C), nc1_method=nc1_method, epoch=2)
    acc.update(H, y)
    acc.update(H[:30] + 1.0, None, split="ood")
    acc.evaluate(H, y)
    acc.evaluate(H[:40] + 0.3, y[:40], split="test")
    return acc.save(path)


def _beside(f, name: str) -> str:
    return os.path.join(os.path.dirname(f.filename), name)


def _external_link(f):
    """/test moved to another file, linked from here."""
    other = _beside(f, "other.h5")
    with h5py.File(other, "w") as g:
        f.copy(f["test"], g, "test")
    del f["test"]
    f["test"] = h5py.ExternalLink(other, "/test")


def _virtual(f):
    """/train/sums mapped from another file's dataset (the same numbers)."""
    other = _beside(f, "other.h5")
    sums = f["train/sums"][...]
    with h5py.File(other, "w") as g:
        g["x"] = sums
    layout = h5py.VirtualLayout(shape=sums.shape, dtype=sums.dtype)
    layout[:] = h5py.VirtualSource(other, "x", shape=sums.shape)
    del f["train/sums"]
    f["train"].create_virtual_dataset("sums", layout)


def _external_storage(target):
    def mutate(f):
        path = _beside(f, "raw")
        sums = f["train/sums"][...]
        if target == "fifo":
            os.mkfifo(path)  # opening it for reading would hang
        else:  # another file's bytes: the same numbers, so that --allow-external measures them
            sums.astype("<f8").tofile(path)
        del f["train/sums"]
        f["train"].create_dataset("sums", shape=sums.shape, dtype="<f8", external=[(path, 0, sums.size * 8)])

    return mutate


def _claims(name, shape):
    def mutate(f):
        group, key = name.rsplit("/", 1)
        del f[name]
        f[group].create_dataset(key, shape=shape, dtype="f8", chunks=tuple(min(s, 4096) for s in shape))

    return mutate


def _soft_loop(f):
    del f["test"]
    f["test"] = h5py.SoftLink("/loop")
    f["loop"] = h5py.SoftLink("/test")


def _soft_link_dataset(f):
    """/train/sums a soft link to a copy elsewhere: followed (it stays in this file)."""
    f["elsewhere"] = f["train/sums"][...]
    del f["train/sums"]
    f["train/sums"] = h5py.SoftLink("/elsewhere")


CASES = {
    # name: (mutation, text in the one-line message)
    "external link": (_external_link, "/test is an external link to"),
    "virtual dataset": (_virtual, "/train/sums is a virtual dataset"),
    "external raw storage": (_external_storage("file"), "/train/sums is stored in an external raw file"),
    "external raw storage in a FIFO": (_external_storage("fifo"), "--allow-external"),
    "soft-link loop": (_soft_loop, "soft links loop"),
    "dangling soft link": (lambda f: (f.__delitem__("test"), f.__setitem__("test", h5py.SoftLink("/nowhere"))), "/nowhere"),
    "10^12 values claimed": (_claims("train/within", (10**12,)), "claims 1000000000000 values"),
    "sums claimed unwritten": (_claims("train/sums", (C, P)), "unwritten or damaged"),
    "class_names a group": (lambda f: f.create_group("class_names"), "/class_names must be a 1-D dataset of strings"),
    "classifier a dataset": (lambda f: (f.__delitem__("classifier"), f.__setitem__("classifier", np.zeros(3))), "/classifier is not a group"),
    "sums a group": (lambda f: (f.__delitem__("train/sums"), f.create_group("train/sums")), "/train/sums is not a dataset"),
    "ood sums of another shape": (lambda f: (f.__delitem__("ood/sums"), f["ood"].__setitem__("sums", np.zeros((2, P)))), "/ood/sums has shape (2, 5), expected (1, 5)"),
    "unknown min_per_class": (lambda f: f.attrs.__setitem__("min_per_class", -2), "min_per_class must be a count"),
    "huge counts": (lambda f: (f.__delitem__("train/counts"), f["train"].__setitem__("counts", np.full(C, 2**63 + 5, np.uint64))), "beyond int64"),
}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(res, code: int, needle: str | None) -> None:
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncli: error: "), res.stderr
    if needle:
        assert needle in res.stderr, res.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_statistics_files_are_refused_in_one_line(tmp_path, case):
    mutate, needle = CASES[case]
    path = _statistics_file(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        mutate(f)
    before = _digest(path)
    for command in (["measure", str(path), "--ood", "ood"], ["compare", str(path)]):
        _one_line(runner.invoke(app, command), 3, needle)
    with pytest.raises(InputError, match="s.h5: "):
        ncli.Accumulator.load(path)
    assert _digest(path) == before


@pytest.mark.parametrize("case", ["external link", "virtual dataset", "external raw storage"])
def test_allow_external_reads_other_files_when_asked(tmp_path, case):
    path = _statistics_file(tmp_path / "s.h5")
    want = json.loads(runner.invoke(app, ["measure", str(path), "--json", "--ood", "ood"]).stdout)
    with h5py.File(path, "a") as f:
        CASES[case][0](f)
    assert runner.invoke(app, ["measure", str(path)]).exit_code == 3
    res = runner.invoke(app, ["measure", str(path), "--json", "--ood", "ood", "--allow-external"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == want
    assert runner.invoke(app, ["compare", str(path), "--json", "--allow-external"]).exit_code == 0
    assert ncli.Accumulator.load(path, allow_external=True).measure(ood="ood")["metrics"] == want["metrics"]


def test_a_soft_link_within_the_file_is_followed(tmp_path):
    path = _statistics_file(tmp_path / "s.h5")
    want = json.loads(runner.invoke(app, ["measure", str(path), "--json"]).stdout)
    with h5py.File(path, "a") as f:
        _soft_link_dataset(f)
    res = runner.invoke(app, ["measure", str(path), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == want


def test_only_a_regular_file_is_opened(tmp_path):
    fifo = tmp_path / "stats.h5"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    for target, needle in ((fifo, "not a regular file"), (tmp_path, "is a directory"), (tmp_path / "none.h5", "no such file")):
        with pytest.raises(InputError, match=needle):
            ncli.Accumulator.load(target)
        _one_line(runner.invoke(app, ["measure", str(target)]), 3, needle)


def test_a_truncated_file_is_refused_in_one_line(tmp_path):
    path = _statistics_file(tmp_path / "s.h5")
    raw = path.read_bytes()
    for keep in (len(raw) // 3, len(raw) - 200):
        path.write_bytes(raw[:keep])
        _one_line(runner.invoke(app, ["measure", str(path)]), 3, str(path))


def _copy_of(path, out) -> bool:
    """What plain h5py reads of ``path`` (every object and attribute) written into a fresh
    file; False when plain h5py cannot read it either."""
    try:
        with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name)
        return True
    except Exception:
        return False


@SETTINGS
@given(
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
    nc1_method=st.sampled_from(["project", "scatter"]),
)
def test_byte_flips_give_clean_error_or_the_record_of_what_the_file_holds(tmp_path_factory, flips, nc1_method):
    """Damage anywhere in the bytes (superblock, object headers, compact data, attributes):
    exit 3 with one line, or the record equal to that of a fresh copy of what h5py reads."""
    d = tmp_path_factory.mktemp("flip")
    path = _statistics_file(d / "s.h5", nc1_method=nc1_method)
    raw = bytearray(path.read_bytes())
    for where, xor in flips:
        raw[int(where * len(raw))] ^= xor
    path.write_bytes(bytes(raw))
    res = runner.invoke(app, ["measure", str(path), "--json", "--per-class", "--ood", "ood"])
    assert path.read_bytes() == bytes(raw)  # never modified
    assert "Traceback" not in res.output
    if res.exit_code != 0:
        assert res.exit_code in (2, 3), (flips, res.exit_code, res.stderr)  # 2: an attribute now names another split
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ncli: error: "), (flips, res.stderr)
        return
    if not _copy_of(path, d / "copy.h5"):
        return
    again = runner.invoke(app, ["measure", str(d / "copy.h5"), "--json", "--per-class", "--ood", "ood"])
    assert again.exit_code == 0, again.stderr  # the damaged file was read as h5py reads it
    assert {**json.loads(again.stdout), "file": None} == {**json.loads(res.stdout), "file": None}
