"""The accumulator API (ncli.Accumulator) against the dense reference of tests/reference.py:
shuffled batches of any size and dtype, numpy arrays and torch tensors (the numpy kernels and
the torch device path, here on the CPU), merged partitions, logits, and every refusal."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ncli
from ncli.errors import InputError, NcliError, UsageError
from ncli.measure.user_batches import BatchError

try:
    from reference import assert_record_matches, reference_record
except ImportError:  # tests/ imported as a package
    from tests.reference import assert_record_matches, reference_record

torch = pytest.importorskip("torch")

C, P = 6, 9


def _data(rng, n=2000, spread=2.0, C=C, p=P):
    means = 4.0 * rng.standard_normal((C, p))
    y = rng.permutation(np.arange(n) % C)
    H = (means[y] + spread * rng.standard_normal((n, p))).astype(np.float32)
    return H, y


def _batches(rng, n, sizes=(1, 7, 64, 300)):
    """A shuffled order of the rows, cut into batches of varied sizes."""
    order = rng.permutation(n)
    cuts, at = [], 0
    while at < n:
        size = int(rng.choice(sizes))
        cuts.append(order[at:at + size])
        at += size
    return cuts


@pytest.fixture
def problem(rng):
    H, y = _data(rng)
    Ht, yt = _data(rng, n=700)
    W, b = rng.standard_normal((C, P)).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    ref = reference_record(H, y, C, W, b, {"test": (Ht, yt)})
    return H, y, Ht, yt, W, b, ref


def _feed(acc, rng, H, y, Ht, yt, convert=lambda a: a, logits_of=None):
    for rows in _batches(rng, len(y)):
        acc.update(convert(H[rows]), convert(y[rows]))
    for split, (X, labels) in (("train", (H, y)), ("test", (Ht, yt))):
        for rows in _batches(rng, len(labels)):
            logits = None if logits_of is None else convert(logits_of(X[rows]))
            acc.evaluate(convert(X[rows]), convert(labels[rows]), split=split, logits=logits)
    return acc


@pytest.mark.parametrize(
    "engine,convert",
    [
        ("auto", lambda a: a),  # numpy arrays: the numpy kernels
        ("auto", torch.from_numpy),  # CPU tensors: the numpy kernels too
        ("torch", torch.from_numpy),  # CPU tensors through the torch device path
    ],
    ids=["numpy", "tensors", "tensors-device-path"],
)
def test_shuffled_float32_batches_equal_the_dense_reference(rng, problem, engine, convert):
    H, y, Ht, yt, W, b, ref = problem
    acc = _feed(ncli.Accumulator(C, W=convert(W), b=convert(b), engine=engine), rng, H, y, Ht, yt, convert)
    assert_record_matches(acc.measure(per_class=True), ref, per_class=True)


def test_logits_give_the_network_decisions(rng, problem):
    H, y, Ht, yt, W, b, ref = problem
    logits_of = lambda X: X.astype(np.float64) @ W.T.astype(np.float64) + b  # noqa: E731
    acc = _feed(ncli.Accumulator(C), rng, H, y, Ht, yt, logits_of=logits_of)
    rec = acc.measure(W=W, b=b)  # the classifier metrics from W, the decisions from the logits
    assert_record_matches(rec, ref)
    acc = _feed(ncli.Accumulator(C, engine="torch"), rng, H, y, Ht, yt, torch.from_numpy, logits_of=logits_of)
    assert_record_matches(acc.measure(W=torch.from_numpy(W), b=torch.from_numpy(b)), ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int32"])
def test_any_real_dtype_is_summed_in_float64(rng, dtype):
    H, y = _data(rng, n=600)
    H = np.round(H * 8) / 8  # exact in float16, bfloat16 and (scaled) integers
    if dtype == "int32":
        H = H * 8
    tensor = torch.from_numpy(H).to(getattr(torch, dtype))
    ref = reference_record(tensor.double().numpy(), y, C)
    for engine in ("auto", "torch"):
        acc = ncli.Accumulator(C, engine=engine)
        for rows in _batches(rng, len(y)):
            acc.update(tensor[rows], torch.from_numpy(y[rows]))
        for rows in _batches(rng, len(y)):
            acc.evaluate(tensor[rows], y[rows])
        assert_record_matches(acc.measure(), ref)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_any_division_into_accumulators_merges_to_one(rng, problem, parts):
    H, y, Ht, yt, W, b, ref = problem
    whole = _feed(ncli.Accumulator(C, W=W, b=b), rng, H, y, Ht, yt).measure(per_class=True)
    owner = rng.integers(0, parts, size=len(y))  # a random, uneven division of the rows
    owner_t = rng.integers(0, parts, size=len(yt))
    workers = [ncli.Accumulator(C, W=W, b=b, engine="torch" if k % 2 else "auto") for k in range(parts)]
    for k, acc in enumerate(workers):
        mine = rng.permutation(np.flatnonzero(owner == k))
        for rows in np.array_split(mine, 3):
            acc.update(torch.from_numpy(H[rows]) if k % 2 else H[rows], y[rows])
    total = workers[0]
    for acc in workers[1:]:
        total.merge(acc)
    total.freeze()
    workers = [total] + [total.copy() for _ in range(parts - 1)]  # the same frozen model for each
    for k, acc in enumerate(workers):
        acc.evaluate(H[owner == k], y[owner == k])
        acc.evaluate(Ht[owner_t == k], yt[owner_t == k], split="test")
    for acc in workers[1:]:
        total.merge(acc)
    merged = total.measure(per_class=True)
    assert_record_matches(merged, ref, per_class=True)
    assert_record_matches(merged, {**whole, "per_class": ref["per_class"]}, rtol=1e-12, per_class=True)


@pytest.mark.parametrize("nc1_method", ["project", "scatter"])
def test_both_ways_of_keeping_sigma_w_on_the_device_path(rng, problem, nc1_method):
    H, y, Ht, yt, W, b, ref = problem
    acc = ncli.Accumulator(C, W=W, b=b, engine="torch", nc1_method=nc1_method)
    acc = _feed(acc, rng, H, y, Ht, yt, torch.from_numpy)
    assert acc.method == nc1_method
    assert_record_matches(acc.measure(per_class=True), ref, per_class=True)


def test_scatter_keeps_both_global_means(rng, problem):
    H, y, Ht, yt, W, b, _ = problem
    acc = _feed(ncli.Accumulator(C, W=W, b=b, nc1_method="scatter"), rng, H, y, Ht, yt)
    for kind in ("class", "sample"):
        assert_record_matches(acc.measure(global_mean=kind), reference_record(H, y, C, W, b, {"test": (Ht, yt)}, global_mean=kind))
    projected = _feed(ncli.Accumulator(C, W=W, b=b, nc1_method="project"), rng, H, y, Ht, yt)
    with pytest.raises(UsageError, match="global-mean class.*p × p scatter"):
        projected.measure(global_mean="sample")


def test_save_then_load_is_the_same_record(rng, problem, tmp_path):
    H, y, Ht, yt, W, b, _ = problem
    acc = _feed(ncli.Accumulator(C, W=W, b=b, epoch=3, step=30, layer="fc", class_names=list("abcdef")), rng, H, y, Ht, yt)
    path = acc.save(tmp_path / "a.stats.h5")
    record = acc.measure(per_class=True)
    loaded = ncli.Accumulator.load(path)
    assert loaded.measure(per_class=True) == {**record, "file": str(path)}
    assert (record["epoch"], record["step"], record["layer"], record["per_class"][2]["name"]) == (3, 30, "fc", "c")
    with pytest.raises(NcliError, match="already exists"):
        acc.save(path)
    acc.save(path, force=True)


def test_a_batch_of_no_rows_changes_nothing(rng, problem):
    H, y, Ht, yt, W, b, ref = problem
    acc = ncli.Accumulator(C, W=W, b=b)
    acc.update(H[:0], y[:0])
    acc = _feed(acc, rng, H, y, Ht, yt)
    acc.evaluate(Ht[:0], yt[:0], split="test")
    assert_record_matches(acc.measure(), ref)


def test_without_classifier_or_logits_the_network_numbers_are_null(rng, problem):
    H, y, Ht, yt, *_ = problem
    acc = _feed(ncli.Accumulator(C), rng, H, y, Ht, yt)
    rec = acc.measure()
    assert rec["splits"]["test"]["accuracy"] is None and rec["metrics"]["self_duality"] is None
    assert_record_matches(rec, reference_record(H, y, C, None, None, {"test": (Ht, yt)}))
    with pytest.raises(UsageError, match="split 'train' was evaluated without logits and without a classifier"):
        acc.measure(W=np.ones((C, P)))


# -- refusals ------------------------------------------------------------------------------


def _refused(call, *patterns):
    with pytest.raises(NcliError) as info:
        call()
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))
    return info.value


def test_bad_batches_are_named_and_change_nothing(rng, problem):
    H, y, Ht, yt, W, b, ref = problem
    acc = ncli.Accumulator(C, W=W, b=b)
    acc.update(H[:10], y[:10])
    bad = y[10:20].copy()
    bad[3] = C
    error = _refused(lambda: acc.update(H[10:20], bad), "update(): batch 1 of split 'train': row 3: label 6 outside [0, 6)")
    assert isinstance(error, BatchError) and (error.split, error.batch, error.row) == ("train", 1, 3)
    nan = H[10:20].copy()
    nan[4, 1] = np.nan
    _refused(lambda: acc.update(nan, y[10:20]), "batch 2 of split 'train': row 4: features contain NaN or Inf")
    _refused(lambda: acc.update(torch.from_numpy(nan), torch.from_numpy(y[10:20])), "batch 3", "row 4")
    _refused(lambda: acc.update(H[:5, :4], y[:5]), "batch 4", "p = 4 columns, but earlier batches had p = 9")
    _refused(lambda: acc.update(H[:5], y[:4]), "labels must be a (5,) array")
    _refused(lambda: acc.update(H[:5], y[:5].astype(float)), "labels must be integers")
    _refused(lambda: acc.update(H[0], y[:1]), "features must be a (batch, p) array")
    _refused(lambda: acc.update(H[:5] > 0, y[:5]), "features must be real numbers")
    # the refused batches added nothing: the rest of the data gives the reference exactly
    acc.update(H[10:], y[10:])
    acc.evaluate(H, y)
    bad_logits = np.zeros((5, C))
    bad_logits[2, 0] = np.inf
    acc2 = acc.copy()
    _refused(lambda: acc2.evaluate(Ht[:5], yt[:5], split="test", logits=bad_logits),
             "evaluate(): batch 0 of split 'test': row 2: logits contain NaN or Inf")
    acc.evaluate(Ht, yt, split="test")
    _refused(lambda: acc.evaluate(Ht[:5], yt[:5], split="test", logits=np.zeros((5, C))),
             "batch 1 of split 'test': given logits, but earlier batches of this split were decided by the classifier")
    assert_record_matches(acc.measure(), ref)


def test_bad_device_batches_are_reported_before_any_result(rng):
    H, y = _data(rng, n=300)
    acc = ncli.Accumulator(C, engine="torch")
    acc.update(torch.from_numpy(H[:100]), torch.from_numpy(y[:100]))
    labels = torch.from_numpy(y[100:200]).clone()
    labels[7] = -1
    acc.update(torch.from_numpy(H[100:200]), labels)  # checked on the device: no wait here
    _refused(lambda: acc.evaluate(torch.from_numpy(H), torch.from_numpy(y)),
             "update(): batch 1 of split 'train': labels outside [0, 6)")
    _refused(lambda: acc.measure(), "batch 1 of split 'train'")  # and the accumulator stays refused
    acc = ncli.Accumulator(C, engine="torch")
    nan = torch.from_numpy(H).clone()
    nan[250, 0] = float("inf")
    for start in range(0, 300, 10):  # the checks are read every 64 batches at the latest
        acc.update(nan[start:start + 10], torch.from_numpy(y[start:start + 10]))
    _refused(lambda: acc.freeze(), "update(): batch 25 of split 'train': features contain NaN or Inf")


def test_calls_out_of_order_are_refused(rng, problem):
    H, y, Ht, yt, W, b, _ = problem
    _refused(lambda: ncli.Accumulator(1), "at least 2 classes")
    _refused(lambda: ncli.Accumulator(C).evaluate(H, y), "evaluate() before update()")
    _refused(lambda: ncli.Accumulator(C).measure(), "measure() needs pass 2 of split 'train'")
    acc = ncli.Accumulator(C)
    acc.update(H, y, split="test")
    _refused(lambda: acc.evaluate(H, y), "no class sums of split 'train'")
    acc = ncli.Accumulator(C)
    acc.update(H[y != 2], y[y != 2])
    _refused(lambda: acc.evaluate(H, y), "split 'train': class 2 has no samples")
    acc = ncli.Accumulator(C, W=W, b=b)
    acc.update(H, y)
    acc.evaluate(H, y)
    _refused(lambda: acc.update(H, y), "update(): pass 1 has ended")
    _refused(lambda: acc.set_classifier(W, b), "set it before")
    _refused(lambda: acc.measure(W=W + 1, b=b), "not the classifier pass 2 took its decisions with")
    _refused(lambda: ncli.Accumulator(C, W=W[:, :4]).update(H, y), "p = 9 columns, but earlier batches had p = 4")
    _refused(lambda: ncli.Accumulator(C, W=W[:3]), "classifier weight must be (6, p")


def test_merging_what_does_not_fit_is_refused(rng, problem):
    H, y, Ht, yt, W, b, _ = problem
    one = ncli.Accumulator(C)
    one.update(H, y)
    _refused(lambda: one.merge(ncli.Accumulator(C + 1)), "differ in num_classes (6 vs 7)")
    other = ncli.Accumulator(C)
    other.update(H[:, :5], y)
    _refused(lambda: one.merge(other), "differ in p (9 vs 5)")
    _refused(lambda: one.merge(ncli.Accumulator(C, W=W)), "differ in the classifier")
    _refused(lambda: one.merge(ncli.Accumulator(C, global_mean="sample")), "global_mean")
    two = ncli.Accumulator(C)
    two.update(H[:100], y[:100])
    one.evaluate(H, y)
    _refused(lambda: one.merge(two), "one accumulator is in pass 1")
    two.update(H[100:], y[100:])
    two.evaluate(H, y)  # its own model: the same data, summed in another order
    two.class_stats["train"].sums[0, 0] += 1.0
    _refused(lambda: one.merge(two), "froze different models")
    _refused(lambda: one.merge(object()), "expected an Accumulator")


def test_all_reduce_without_a_process_group_is_refused(rng):
    H, y = _data(rng, n=60)
    acc = ncli.Accumulator(C)
    acc.update(H, y)
    _refused(lambda: acc.all_reduce(), "initialised torch.distributed process group")


def test_errors_are_ncli_errors():
    assert issubclass(BatchError, InputError) and issubclass(UsageError, NcliError)


def test_import_ncli_stays_light_and_numpy_use_never_imports_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import ncli\n"
        "assert 'torch' not in sys.modules and 'ncli.measure' not in sys.modules, sorted(sys.modules)\n"
        "acc = ncli.Accumulator(3)\n"
        "H = np.random.default_rng(0).normal(size=(30, 4)); y = np.arange(30) % 3\n"
        "acc.update(H, y); acc.evaluate(H, y); acc.measure(); acc.save(sys.argv[1])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.h5")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
