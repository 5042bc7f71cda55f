"""Property and fuzz tests (hypothesis) for the feature-file path.

- Random valid files round-trip through the writer and the reader.
- Random corruption of a valid file (attributes, shapes, dtypes, truncation) gives either a
  clean error (exit 3, one line, no traceback) or a correct result: one that equals the
  independent dense reference computed from what the damaged file now holds. Never exit 1
  (internal error), never a silent wrong number.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ncli.cli import app
from ncli.features import FeatureFile, write_features

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # pragma: no cover
    from tests.reference import assert_record_matches, reference_record

runner = CliRunner()
# repeatable examples unless NCLI_HYPOTHESIS_PROFILE=explore (tests/conftest.py)
SETTINGS = settings(max_examples=int(__import__("os").environ.get("NCLI_FUZZ_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def feature_sets(draw):
    C = draw(st.integers(2, 5))
    p = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    splits = {}
    for name in draw(st.lists(st.sampled_from(["train", "test", "val", "ood"]), min_size=1, max_size=3, unique=True)):
        n = draw(st.integers(1, 60))
        d = {"features": rng.standard_normal((n, p)).astype(dtype), "labels": rng.integers(0, C, n)}
        if draw(st.booleans()):
            d["index"] = rng.permutation(n)
        if draw(st.booleans()):
            d["logits"] = rng.standard_normal((n, C)).astype(np.float32)
        splits[name] = d
    W = rng.standard_normal((C, p)).astype(dtype) if draw(st.booleans()) else None
    b = rng.standard_normal(C).astype(dtype) if W is not None and draw(st.booleans()) else None
    epoch = draw(st.none() | st.integers(0, 10**6))
    return C, splits, W, b, epoch


@SETTINGS
@given(data=feature_sets())
def test_round_trip(tmp_path_factory, data):
    C, splits, W, b, epoch = data
    path = tmp_path_factory.mktemp("rt") / "f.h5"
    write_features(path, splits, num_classes=C, weight=W, bias=b, attrs={"epoch": epoch})
    with FeatureFile(path) as ff:
        assert ff.num_classes == C
        assert ff.epoch == epoch
        assert set(ff.splits) == set(splits)
        for name, d in splits.items():
            H = np.concatenate([c.features for c in ff.iter_chunks(name, 7)])
            y = np.concatenate([c.labels for c in ff.iter_chunks(name, 7)])
            np.testing.assert_array_equal(H, d["features"])
            assert H.dtype == d["features"].dtype
            np.testing.assert_array_equal(y, d["labels"])
            info = ff.split(name)
            assert info.has_index == ("index" in d) and info.has_logits == ("logits" in d)
        clf = ff.classifier()
        if W is None:
            assert clf is None
        else:
            np.testing.assert_array_equal(clf[0], W.astype(np.float64))
            np.testing.assert_array_equal(clf[1], np.zeros(C) if b is None else b.astype(np.float64))


# --- corruption -------------------------------------------------------------------------

ATTR_VALUES = st.one_of(
    st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
    st.just(b"ncli.features"),
    st.just(np.arange(3)),
)
DATASETS = ["train/features", "train/labels", "test/features", "test/labels", "classifier/weight", "classifier/bias"]
DTYPES = [np.int8, np.int64, np.uint8, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["attr", "dataset", "truncate", "delete"]))
    if kind == "attr":
        return ("attr", draw(st.sampled_from(["ncli_format", "ncli_format_version", "num_classes", "epoch", "step"])), draw(ATTR_VALUES))
    if kind == "dataset":
        shape = tuple(draw(st.lists(st.integers(0, 70), min_size=0, max_size=3)))
        return ("dataset", draw(st.sampled_from(DATASETS)), shape, draw(st.sampled_from(DTYPES)), draw(st.integers(0, 9)))
    if kind == "truncate":
        return ("truncate", draw(st.floats(0.0, 0.99)))
    return ("delete", draw(st.sampled_from(DATASETS + ["classifier", "test", "train"])))


def _apply(path, mut):
    if mut[0] == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * mut[1])])
        return
    with h5py.File(path, "a") as f:
        if mut[0] == "attr":
            f.attrs[mut[1]] = mut[2]
        elif mut[0] == "dataset":
            _, name, shape, dtype, seed = mut
            rng = np.random.default_rng(seed)
            arr = (rng.standard_normal(shape) * 3).astype(dtype) if shape else dtype(1)
            del f[name]
            f.create_dataset(name, data=arr)
        else:
            del f[mut[1]]


# beyond this a feature's square swamps the class means' differences in float64 distances, and
# the reference's nearest-centre decisions become ties (see reference.ncc_decisions)
NCC_REFERENCE_LIMIT = 1e12


def _reference_from_file(path, split="train"):
    with h5py.File(path, "r") as f:
        C = int(f.attrs["num_classes"])
        W = f["classifier/weight"][...] if "classifier/weight" in f else None
        b = f["classifier/bias"][...] if "classifier/bias" in f else None
        others = {s: (f[s]["features"][...], f[s]["labels"][...]) for s in ("test",) if s in f and s != split}
        ref = reference_record(f[split]["features"][...], f[split]["labels"][...], C, W, b, others)
        largest = max(float(np.abs(f[s]["features"][...]).max(initial=0.0)) for s in (split, *others))
        return ref, largest < NCC_REFERENCE_LIMIT


def _refused_cleanly(res, case) -> bool:
    """True when measure refused the file as a user should see it (exit 3, one line, no
    traceback); False when it measured it."""
    assert "Traceback" not in res.output
    if res.exit_code == 0:
        return False
    assert res.exit_code == 3, (case, res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncli: error: "), (case, res.stderr)
    return True


def _assert_matches_reference(record: dict, path) -> None:
    """``record`` equals the reference computed from what h5py reads of ``path`` (its NCC
    numbers only where the reference's distances can decide them)."""
    try:
        ref, ncc_comparable = _reference_from_file(path)
    except Exception:  # h5py reads what measure read through direct reads only: nothing to compare with
        return
    assert_record_matches(record, ref, ncc=ncc_comparable)


@SETTINGS
@given(mut=mutations())
def test_corruption_gives_clean_error_or_correct_result(tmp_path_factory, mut):
    d = tmp_path_factory.mktemp("fz")
    rng = np.random.default_rng(0)
    C, p = 3, 4
    y = np.arange(60) % C
    H = (np.eye(C, p)[y] * 4 + rng.standard_normal((60, p))).astype(np.float32)
    path = write_features(
        d / "f.h5",
        {"train": {"features": H, "labels": y}, "test": {"features": H[:30] + 0.5, "labels": y[:30]}},
        num_classes=C,
        weight=rng.standard_normal((C, p)),
        bias=rng.standard_normal(C),
    )
    _apply(path, mut)
    snapshot = d / "snapshot.h5"
    shutil.copyfile(path, snapshot)
    res = runner.invoke(app, ["measure", str(path), "--json"])
    assert path.read_bytes() == snapshot.read_bytes()  # never modified
    if _refused_cleanly(res, mut):
        return
    ref, ncc_comparable = _reference_from_file(path)
    assert_record_matches(json.loads(res.stdout), ref, ncc=ncc_comparable)


@SETTINGS
@given(flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
@example(flips=[(0.244140625, 64)])  # a classifier entry of 1.1e308: its products overflowed to null metrics
@example(flips=[(0.65625, 100)])  # a feature of 4.8e16: two unit means 6e-15 apart (GNC2 ill-conditioned)
@example(flips=[(0.83203125, 192)])  # a test feature of -4.7e36: its distances round to ties in the reference
def test_byte_flips_give_clean_error_or_correct_result(tmp_path_factory, flips):
    """Damage anywhere in the file's bytes (superblock, B-trees, object headers, data): exit 3
    with one line, or a result equal to the reference computed from what h5py now reads.
    h5py's RuntimeError on damaged metadata ("wrong B-tree signature") was exit 1."""
    d = tmp_path_factory.mktemp("flip")
    rng = np.random.default_rng(1)
    C, p = 3, 4
    y = np.arange(60) % C
    H = (np.eye(C, p)[y] * 4 + rng.standard_normal((60, p))).astype(np.float32)
    path = write_features(
        d / "f.h5", {"train": {"features": H, "labels": y}, "test": {"features": H[:30], "labels": y[:30]}},
        num_classes=C, weight=rng.standard_normal((C, p)),
    )
    raw = bytearray(path.read_bytes())
    for where, xor in flips:
        raw[int(where * len(raw))] ^= xor
    path.write_bytes(bytes(raw))
    res = runner.invoke(app, ["measure", str(path), "--json"])
    assert path.read_bytes() == bytes(raw)
    if _refused_cleanly(res, flips):
        return
    _assert_matches_reference(json.loads(res.stdout), path)
