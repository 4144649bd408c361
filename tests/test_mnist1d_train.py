"""mnist1d training: the loop against a plain torch.optim loop, seeds, checkpoints, leaks."""

import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optimlab.errors import RunError, UsageError
from optimlab.mnist1d.data import load_mnist1d, make_splits
from optimlab.mnist1d.models import build_model
from optimlab.mnist1d.train import TrainConfig, train
from optimlab.mnist1d.variants import DEFAULT_VARIANTS, VARIANTS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are too small for intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_splits(load_mnist1d(tmp_path_factory.getbasetemp() / "mnist1d-cache"))


def metrics(result):
    """The history without wall times, for exact comparisons."""
    return [{k: v for k, v in asdict(m).items() if k != "seconds"} for m in result.history]


def test_adam_matches_a_plain_torch_optim_loop(splits):
    """Same init, order and batches as documented (streams 0 and 1 of SeedSequence(seed)),
    torch.optim.Adam: the metrics agree to float32 rounding."""
    config = TrainConfig("adam", lr=3e-3, epochs=2, seed=5)
    result = train(config, splits)

    model_seed, order_seed, _ = np.random.SeedSequence(5).generate_state(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_seed))
        model = build_model("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order_gen = torch.Generator().manual_seed(int(order_seed))
    for m in result.history:
        order = torch.randperm(len(splits.x_train), generator=order_gen)
        for idx in order.split(100):
            opt.zero_grad()
            F.cross_entropy(model(splits.x_train[idx]), splits.y_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            for x, y, loss, acc in [
                (splits.x_train, splits.y_train, m.train_loss, m.train_accuracy),
                (splits.x_val, splits.y_val, m.val_loss, m.val_accuracy),
                (splits.x_test, splits.y_test, m.test_loss, m.test_accuracy),
            ]:
                logits = model(x)
                assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
                assert acc == pytest.approx(
                    (logits.argmax(1) == y).double().mean().item(), abs=2e-3
                )
    assert result.final.beta1_mean is None and result.beta1_history == []
    assert not result.diverged and len(result.history) == 2


def test_frozen_gate_dynamic_adam_is_adam(splits):
    adam = train(TrainConfig("adam", lr=3e-3, epochs=2), splits)
    frozen = train(TrainConfig("dynamic_adam", lr=3e-3, gate_lr=0.0, epochs=2), splits)
    assert frozen.beta1_history == pytest.approx([0.9] * 64)
    for a, b in zip(adam.history, frozen.history, strict=True):
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
        assert b.test_loss == pytest.approx(a.test_loss, rel=1e-4)


def test_runs_are_reproducible_from_the_seed(splits):
    config = TrainConfig("dynamic_adam", lr=3e-3, epochs=2, seed=3)
    a, b = train(config, splits), train(config, splits)
    assert metrics(a) == metrics(b) and a.beta1_history == b.beta1_history
    c = train(replace(config, seed=4), splits)
    assert metrics(c) != metrics(a)


@pytest.mark.parametrize("name", DEFAULT_VARIANTS)
def test_every_variant_trains(splits, name):
    result = train(TrainConfig(name, lr=1e-3, epochs=1), splits)
    final = result.final
    assert not result.diverged and final.epoch == 1
    assert 0 < final.train_loss < math.log(10) + 0.5
    for acc in (final.train_accuracy, final.val_accuracy, final.test_accuracy):
        assert 0 <= acc <= 1
    has_gate = VARIANTS[name].has_gate
    assert (final.beta1_mean is not None) == has_gate
    assert len(result.beta1_history) == (32 if has_gate else 0)


def test_cnn_trains(splits):
    result = train(TrainConfig("adam", lr=1e-3, epochs=1, model="cnn"), splits)
    assert result.final.val_loss < math.log(10)


def test_partial_last_batch_and_full_training_set(mnist1d_all):
    config = TrainConfig("dynamic_adam_online", lr=1e-3, epochs=1, batch_size=300)
    result = train(config, mnist1d_all)
    assert len(result.beta1_history) == 14  # 13 batches of 300 and one of 100
    assert math.isnan(result.final.val_loss) and math.isnan(result.final.val_accuracy)
    assert result.final.test_loss < math.log(10)


@pytest.fixture(scope="module")
def mnist1d_all(tmp_path_factory):
    return make_splits(
        load_mnist1d(tmp_path_factory.getbasetemp() / "mnist1d-cache"), val_fraction=0
    )


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "name", ["adam", "sgd", "dynamic_adam", "dynamic_adam_online", "dynamic_adam_published"]
)
def test_interrupted_checkpointed_run_resumes_bit_identically(splits, tmp_path, name):
    config = TrainConfig(name, lr=3e-3, epochs=3)
    uninterrupted = train(config, splits)

    def stop_after_first(m):
        if m.epoch == 1:
            raise Interrupt

    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(config, splits, checkpoint=path, on_epoch=stop_after_first)
    seen = []
    resumed = train(config, splits, checkpoint=path, on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [2, 3]
    assert metrics(resumed) == metrics(uninterrupted)
    assert resumed.beta1_history == uninterrupted.beta1_history
    # a finished checkpoint gives the result back without training
    again = train(config, splits, checkpoint=path, on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [2, 3] and metrics(again) == metrics(uninterrupted)


def test_checkpoint_of_another_config_or_split_is_refused(splits, tmp_path):
    path = tmp_path / "run.pt"
    train(TrainConfig("adam", lr=1e-3, epochs=1), splits, checkpoint=path)
    with pytest.raises(RunError, match="another configuration"):
        train(TrainConfig("adam", lr=2e-3, epochs=1), splits, checkpoint=path)
    with pytest.raises(RunError, match="another configuration"):
        train(TrainConfig("adam", lr=1e-3, epochs=1), splits.without_test(), checkpoint=path)
    path.write_bytes(b"garbage")
    with pytest.raises(RunError, match="damaged or not an optimlab checkpoint"):
        train(TrainConfig("adam", lr=1e-3, epochs=1), splits, checkpoint=path)


@pytest.mark.parametrize("name", ["dynamic_adam", "dynamic_adam_train", "dynamic_adam_published"])
def test_test_data_never_reaches_training_or_meta_batches(splits, name):
    """Poisoning the test inputs with NaN changes nothing but the test metrics."""
    poisoned = replace(splits, x_test=torch.full_like(splits.x_test, math.nan))
    config = TrainConfig(name, lr=3e-3, epochs=2)
    clean = train(config, splits.without_test())
    dirty = train(config, poisoned)
    assert not dirty.diverged
    assert all(math.isnan(m.test_loss) for m in dirty.history)
    for a, b in zip(clean.history, dirty.history, strict=True):
        assert (a.train_loss, a.val_loss, a.beta1_mean) == (b.train_loss, b.val_loss, b.beta1_mean)
        assert a.test_loss is None and a.test_accuracy is None


def test_train_meta_source_never_reads_validation_data(splits):
    poisoned = replace(splits, x_val=torch.full_like(splits.x_val, math.nan))
    result = train(TrainConfig("dynamic_adam", lr=3e-3, epochs=1, meta_source="train"), poisoned)
    assert not result.diverged and math.isfinite(result.final.train_loss)
    assert math.isnan(result.final.val_loss)


@pytest.mark.parametrize("name, lr", [("sgd", 50.0), ("adam", 1e4), ("dynamic_adam_online", 1e4)])
def test_divergence_stops_training_without_raising(splits, name, lr):
    result = train(TrainConfig(name, lr=lr, epochs=4), splits)
    assert result.diverged
    assert len(result.history) < 4


@pytest.mark.parametrize(
    "name", ["adam", "dynamic_adam", "dynamic_adam_online", "dynamic_adam_published"]
)
def test_non_finite_gradient_is_divergence_not_an_exception(splits, name):
    x_train = splits.x_train.clone()
    x_train[7, 3] = math.nan
    result = train(TrainConfig(name, lr=1e-3, epochs=3), replace(splits, x_train=x_train))
    assert result.diverged and len(result.history) == 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimizer": "adamax"}, "unknown optimizer"),
        ({"model": "rnn"}, "unknown model"),
        ({"lr": 0.0}, "lr must be"),
        ({"lr": math.nan}, "lr must be"),
        ({"gate_lr": 1e-3}, "gate_lr applies only"),
        ({"momentum": 0.5}, "momentum applies only"),
        ({"meta_source": "val"}, "meta source does not apply"),
        ({"optimizer": "dynamic_adam", "meta_source": "test"}, "meta source must be"),
        ({"optimizer": "dynamic_adam_online", "meta_source": "val"}, "does not apply"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"batch_size": 2.5}, "batch_size must be"),
        ({"seed": -1}, "seed must be"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_invalid_config_is_a_usage_error(splits, changes, message):
    config = replace(TrainConfig("adam", lr=1e-3, epochs=1), **changes)
    with pytest.raises(UsageError, match=message):
        train(config, splits)


def test_an_empty_training_split_is_a_usage_error(splits):
    empty = replace(splits, x_train=splits.x_train[:0], y_train=splits.y_train[:0])
    with pytest.raises(UsageError, match="training split is empty.*--val-fraction"):
        train(TrainConfig("adam", lr=1e-3, epochs=1), empty)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_usage_error(splits):
    with pytest.raises(UsageError, match="CUDA is not available"):
        train(TrainConfig("adam", lr=1e-3, device="cuda"), splits)


def test_validation_meta_batches_need_a_validation_split(mnist1d_all):
    with pytest.raises(UsageError, match="val_fraction > 0"):
        train(TrainConfig("dynamic_adam", lr=1e-3, epochs=1), mnist1d_all)
    result = train(TrainConfig("dynamic_adam", lr=1e-3, epochs=1, meta_source="train"), mnist1d_all)
    assert not result.diverged


def test_variants_registry():
    assert DEFAULT_VARIANTS == [
        "adam",
        "dynamic_adam",
        "dynamic_adam_train",
        "dynamic_adam_online",
        "sgd",
        "rmsprop",
        "adagrad",
        "dynamic_adam_published",
    ]
    assert [n for n, v in VARIANTS.items() if v.reference_only] == ["dynamic_adam_published"]
    assert VARIANTS["dynamic_adam"].meta_source == "val"
    assert VARIANTS["dynamic_adam_train"].meta_source == "train"
    assert VARIANTS["dynamic_adam_online"].meta_source is None
    import optimlab.optim

    assert "published" not in optimlab.optim.available()
    assert "dynamic_adam_published" not in optimlab.optim.available()
