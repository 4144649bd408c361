"""The mnist1d study's data, models, optimizer variants and training loop.

    data.py      generation, verified cache, leak-free splits (load_mnist1d, make_splits)
    models.py    the reference MLP and CNN (build_model)
    variants.py  the optimizer variants the study compares (VARIANTS; imports no torch)
    train.py     the training loop (TrainConfig, train, TrainResult)
    reference.py the literal published DynamicAdam procedure, for the report only

    >>> from optimlab.mnist1d.data import load_mnist1d, make_splits
    >>> from optimlab.mnist1d.train import TrainConfig, train
    >>> splits = make_splits(load_mnist1d(), val_fraction=0.2, seed=0)
    >>> result = train(TrainConfig("adam", lr=1e-2, epochs=25), splits.without_test())

Nothing is re-exported here, so `optimlab.mnist1d.train` always names the module (its
function `train` would shadow it) and importing `variants` stays free of torch.
"""
