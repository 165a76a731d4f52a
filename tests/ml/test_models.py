"""The model options' builders: logits of 10 classes, weights fixed by the seed, the ViT's two LayerNorm orders, and
their arguments checked when built. (Each one trains in a real run: tests/run/test_models.py.)"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from lrsweep.ml import keras_adapter, stacking
from lrsweep.ml.models import build_cnn, build_mlp, build_vit
from lrsweep.ml.packed_mlp import NotPackable, mlp_spec
from lrsweep.ml.vmapped import check_model

SMALL_VIT = {"width": 16, "depth": 2, "heads": 2}  # builds and runs in well under a second
IMAGES = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)


def seeded(build, seed: int, **kwargs) -> keras.Model:
    keras_adapter.set_global_seed(seed)
    return build(**kwargs)


def same_weights(a: keras.Model, b: keras.Model) -> bool:
    values = [[np.asarray(v.value) for v in model.weights] for model in (a, b)]
    return all(np.array_equal(x, y) for x, y in zip(*values, strict=True))


BUILDS = [
    ("mlp", build_mlp, {}),
    ("cnn", build_cnn, {}),
    ("vit post", build_vit, {**SMALL_VIT, "norm": "post", "pool": "cls"}),
    ("vit pre", build_vit, {**SMALL_VIT, "norm": "pre", "pool": "mean"}),
]


@pytest.mark.parametrize(("name", "build", "kwargs"), BUILDS, ids=[b[0] for b in BUILDS])
def test_a_seed_gives_the_same_weights_and_another_seed_others(name, build, kwargs):
    first, again, other = seeded(build, 3, **kwargs), seeded(build, 3, **kwargs), seeded(build, 4, **kwargs)
    assert same_weights(first, again)
    assert not same_weights(first, other)
    logits = np.asarray(first(IMAGES))
    assert logits.shape == (4, 10) and first.name == name.split()[0]
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities
    np.testing.assert_array_equal(logits, np.asarray(again(IMAGES)))


def test_the_cnn_doubles_its_channels_per_block_with_batchnorm_and_pools_globally():
    model = build_cnn(channels=8, blocks=3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [8, 16, 32] and not any(conv.use_bias for conv in convs)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 3
    assert [type(layer).__name__ for layer in model.layers[-2:]] == ["GlobalAveragePooling2D", "Dense"]
    assert model.output_shape == (None, 10)


def layer_kinds(model: keras.Model) -> list[str]:
    """The ViT's layers in the order they are applied, short: LN, MHA, Dense, Add, ..."""
    short = {"LayerNormalization": "LN", "MultiHeadAttention": "MHA"}
    return [short.get(type(layer).__name__, type(layer).__name__) for layer in model.layers]


def test_post_ln_normalizes_after_each_residual_and_pre_ln_before_each_branch_with_a_final_norm():
    post = layer_kinds(build_vit(**SMALL_VIT | {"depth": 1}, norm="post"))
    pre = layer_kinds(build_vit(**SMALL_VIT | {"depth": 1}, norm="pre"))
    embedding = ["InputLayer", "Reshape", "Conv2D", "Reshape", "PositionEmbedding"]
    assert post == [*embedding, "MHA", "Add", "LN", "Dense", "Dense", "Add", "LN", "GlobalAveragePooling1D", "Dense"]
    assert pre == [
        *embedding, "LN", "MHA", "Add", "LN", "Dense", "Dense", "Add", "LN", "GlobalAveragePooling1D", "Dense",
    ]  # fmt: skip
    # Per block, two LayerNorms either way; pre-LN has one more, after the last block.
    for depth in (1, 3):
        post, pre = (build_vit(**SMALL_VIT | {"depth": depth}, norm=norm) for norm in ("post", "pre"))
        assert layer_kinds(post).count("LN") == 2 * depth and layer_kinds(pre).count("LN") == 2 * depth + 1
        assert "final_norm" in [layer.name for layer in pre.layers]
        assert "final_norm" not in [layer.name for layer in post.layers]
        assert post.count_params() + 2 * SMALL_VIT["width"] == pre.count_params()


def test_the_class_token_is_one_more_token_and_the_one_classified_from():
    cls, mean = build_vit(**SMALL_VIT, pool="cls"), build_vit(**SMALL_VIT, pool="mean")
    names = [layer.name for layer in cls.layers]
    assert "class_token" in names and "mean_pool" not in names
    assert cls.get_layer("position_embedding").embedding.shape == (17, 16)  # 4x4 patches of 7x7, and the class token
    assert mean.get_layer("position_embedding").embedding.shape == (16, 16)
    assert build_vit(**SMALL_VIT, patch_size=4).get_layer("position_embedding").embedding.shape == (49, 16)


def test_dropout_is_off_by_default_and_seeded_when_on():
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in build_vit(**SMALL_VIT).layers)
    model = seeded(build_vit, 0, **SMALL_VIT, dropout=0.5)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2 * SMALL_VIT["depth"]
    training = np.asarray(model(IMAGES, training=True))
    assert not np.allclose(training, np.asarray(model(IMAGES, training=False)))  # it drops something
    again = seeded(build_vit, 0, **SMALL_VIT, dropout=0.5)
    np.testing.assert_array_equal(training, np.asarray(again(IMAGES, training=True)))  # the same units, same seed


@pytest.mark.parametrize(
    ("build", "kwargs", "message"),
    [
        (
            build_vit,
            {"width": 60, "heads": 8},
            "`width` must be a multiple of `heads` (each head attends in width / heads dimensions). "
            "Received: width=60, heads=8",
        ),
        (
            build_vit,
            {"patch_size": 5},
            "`patch_size` must divide the 28x28 image into whole patches: one of 1, 2, 4, 7, 14, 28. "
            "Received: patch_size=5",
        ),
        (build_vit, {"norm": "middle"}, "`norm` must be one of post, pre. Received: norm='middle'"),
        (build_vit, {"pool": "max"}, "`pool` must be one of cls, mean. Received: pool='max'"),
        (build_vit, {"dropout": 1.0}, "`dropout` must be a number in [0, 1). Received: dropout=1.0"),
        (build_vit, {"depth": 0}, "`depth` must be an integer >= 1. Received: depth=0"),
        (build_cnn, {"blocks": 0}, "`blocks` must be an integer >= 1. Received: blocks=0"),
    ],
)
def test_bad_arguments_are_refused_before_any_layer_is_made(build, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build(**kwargs)


def test_the_mlp_takes_the_fused_path_and_the_others_a_mapped_one_or_say_why():
    mlp_spec(build_mlp())  # fused
    with pytest.raises(NotPackable, match="the model does not start with a Flatten layer"):
        mlp_spec(build_cnn())
    with pytest.raises(NotPackable, match="the model is a Functional, not a keras.Sequential"):
        mlp_spec(build_vit(**SMALL_VIT))
    check_model(build_cnn())  # vmapped (JAX)
    adam = [keras.optimizers.Adam(0.01), keras.optimizers.Adam(0.01)]
    schedules = [keras.optimizers.schedules.ExponentialDecay(0.01, 10, 1.0)] * 2
    for how in ("auto", "alone"):  # auto: JAX on a CPU here
        with pytest.raises(NotPackable, match=rf"other models train alone with hydra.launcher.other_models={how} \("):
            stacking.stack([build_cnn(), build_cnn()], [0, 1], schedules, adam, {}, how)
    for how, path in (("vmap", stacking.VMAPPED), ("unroll", stacking.UNROLLED)):
        assert stacking.stack([build_cnn(), build_cnn()], [0, 1], schedules, adam, {}, how).path == path
    with pytest.raises(ValueError, match="`hydra.launcher.other_models` must be one of auto, vmap, unroll, alone"):
        stacking.stack([build_cnn(), build_cnn()], [0, 1], schedules, adam, {}, "true")
    check_model(build_vit(**SMALL_VIT))
    regularized = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, kernel_regularizer="l2", name="out")])  # fmt: skip
    with pytest.raises(NotPackable, match=r"layers \['out'\] add regularization losses"):
        check_model(regularized)
    with pytest.raises(NotPackable, match="has no weights until it is first called"):
        check_model(keras.Sequential([keras.layers.Dense(10)]))
    with pytest.raises(NotPackable, match=r"not logits \(batch, classes\)"):
        check_model(keras.Sequential([keras.Input((28, 28)), keras.layers.Dense(10)]))
