"""mnist1d data: offline generation, the verified cache, and leak-free splits."""

import random

import numpy as np
import pytest
import torch

from optimlab.errors import UsageError
from optimlab.mnist1d import data as data_module
from optimlab.mnist1d.data import CACHE_NAME, SHAPES, load_mnist1d, make_splits, stratified_split


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory):
    return load_mnist1d(tmp_path_factory.getbasetemp() / "mnist1d-cache")


def fake_arrays(value: float = 0.0) -> dict[str, np.ndarray]:
    """Arrays of the right shapes and dtypes (the cache logic does not care about content)."""
    arrays = {
        name: np.full(shape, value, dtype=data_module.DTYPES[name])
        for name, shape in SHAPES.items()
    }
    arrays["y"][:] = np.arange(4000) % 10
    return arrays


def test_standard_dataset(mnist1d):
    assert {k: v.shape for k, v in mnist1d.items()} == SHAPES
    assert mnist1d["x"].dtype == np.float32 and mnist1d["y"].dtype == np.int64
    # make_dataset standardises all 5000 examples to mean 0 and std 1
    everything = np.concatenate([mnist1d["x"], mnist1d["x_test"]]).astype(np.float64)
    assert abs(everything.mean()) < 1e-5 and abs(everything.std() - 1) < 1e-5
    assert sorted(np.unique(mnist1d["y"])) == list(range(10))
    assert np.bincount(mnist1d["y_test"]).sum() == 1000


def test_cached_data_equals_mnist1d_make_dataset(mnist1d):
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    for name in SHAPES:
        np.testing.assert_array_equal(mnist1d[name], reference[name].astype(mnist1d[name].dtype))


def test_generation_restores_global_rngs(monkeypatch):
    import mnist1d.data

    def reseeding_make_dataset(args):
        random.seed(args.seed)
        np.random.seed(args.seed)  # noqa: NPY002
        return fake_arrays()

    monkeypatch.setattr(mnist1d.data, "make_dataset", reseeding_make_dataset)
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    expected = (random.random(), np.random.rand())  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    data_module.generate_mnist1d()
    assert (random.random(), np.random.rand()) == expected  # noqa: NPY002


def test_cache_is_reused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        data_module, "generate_mnist1d", lambda: calls.append(1) or fake_arrays(1.0)
    )
    first = load_mnist1d(tmp_path)
    second = load_mnist1d(tmp_path)
    assert len(calls) == 1
    for name in SHAPES:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "changed_value", "wrong_shape", "no_checksum"]
)
def test_corrupt_cache_is_regenerated(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(1.0))
    load_mnist1d(tmp_path)
    path = tmp_path / CACHE_NAME
    good = fake_arrays(1.0)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "changed_value":  # one value changed (say, a flipped bit), checksum kept
        bad = fake_arrays(1.0)
        bad["x"][0, 0] = 2.0
        np.savez(path, **bad, sha256=np.array(data_module.checksum(good)))
    elif damage == "wrong_shape":  # consistent checksum, wrong shape
        bad = {**good, "x": good["x"][:10]}
        np.savez(path, **bad, sha256=np.array(data_module.checksum(bad)))
    else:
        np.savez(path, **good)
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(3.0))
    loaded = load_mnist1d(tmp_path)
    assert (loaded["x"] == 3.0).all()  # regenerated
    assert (load_mnist1d(tmp_path)["x"] == 3.0).all()  # and the repaired cache verifies


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(1.0))
    monkeypatch.setenv("OPTIMLAB_CACHE", str(tmp_path / "env"))
    load_mnist1d()
    assert (tmp_path / "env" / CACHE_NAME).exists()


def test_splits_are_disjoint_stratified_and_cover_the_training_set(mnist1d):
    splits = make_splits(mnist1d, val_fraction=0.2, seed=0)
    train, val = splits.train_index, splits.val_index
    assert len(train) == 3200 and len(val) == 800
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(4000))
    counts = np.bincount(mnist1d["y"], minlength=10)
    val_counts = np.bincount(mnist1d["y"][val], minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * counts) < 1)
    np.testing.assert_array_equal(splits.x_train.numpy(), mnist1d["x"][train])
    np.testing.assert_array_equal(splits.y_val.numpy(), mnist1d["y"][val])
    # the test set is the official one, untouched, and shares no example with train or val
    np.testing.assert_array_equal(splits.x_test.numpy(), mnist1d["x_test"])
    np.testing.assert_array_equal(splits.y_test.numpy(), mnist1d["y_test"])
    rows = {row.tobytes() for row in mnist1d["x_test"]}
    assert not any(row.tobytes() in rows for row in mnist1d["x"])


def test_splits_are_seeded(mnist1d):
    a = make_splits(mnist1d, seed=1)
    b = make_splits(mnist1d, seed=1)
    c = make_splits(mnist1d, seed=2)
    np.testing.assert_array_equal(a.val_index, b.val_index)
    assert not np.array_equal(a.val_index, c.val_index)


def test_val_fraction_zero_trains_on_all_4000(mnist1d):
    splits = make_splits(mnist1d, val_fraction=0.0)
    assert splits.x_train.shape == (4000, 40) and splits.x_val.shape == (0, 40)
    assert splits.y_val.shape == (0,)


def test_without_test_withholds_the_test_set(mnist1d):
    splits = make_splits(mnist1d).without_test()
    assert splits.x_test is None and splits.y_test is None
    moved = splits.to("cpu")
    assert moved.x_test is None and moved.x_train.device == torch.device("cpu")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(UsageError, match="val_fraction"):
        stratified_split(np.arange(100) % 10, fraction, 0)


@pytest.mark.parametrize("fraction", [0.9999, 0.999])
def test_a_split_that_leaves_a_class_without_training_examples_is_refused(mnist1d, fraction):
    # 4000 examples of about 400 per class: 0.9999 sends every example to validation, 0.999
    # all of at least one class
    with pytest.raises(UsageError, match=r"--val-fraction.*no training example") as info:
        make_splits(mnist1d, val_fraction=fraction)
    assert "\n" not in str(info.value)


def test_a_class_keeps_its_last_training_example():
    labels = np.repeat(np.arange(3), 10)
    train, val = stratified_split(labels, 0.9, 0)  # 9 of each 10 to validation
    assert np.bincount(labels[train]).tolist() == [1, 1, 1] and len(val) == 27
    with pytest.raises(UsageError, match="class 0 no training example"):
        stratified_split(labels, 0.96, 0)
