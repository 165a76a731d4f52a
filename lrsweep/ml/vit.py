"""A small vision transformer on image patches, with LayerNorm after each residual (post-LN) or before (pre-LN).

Post-LN is the original transformer's order, `x = LN(x + f(x))`; pre-LN, `x = x + f(LN(x))` with a final LN, is
what most vision transformers use. Post-LN is the one known to need a learning-rate warm-up (Xiong et al. 2020,
"On Layer Normalization in the Transformer Architecture"), which is why both are here.
"""

from __future__ import annotations

import keras
from keras import ops

from lrsweep.core.checks import check_choice, check_count, check_number
from lrsweep.ml.data import CLASS_NAMES, IMAGE_SHAPE

NORMS = ("post", "pre")
POOLS = ("cls", "mean")
LN_EPSILON = 1e-6  # as ViT (Keras' default, 1e-3, is meant for BatchNorm-sized inputs)


class ClassToken(keras.layers.Layer):
    """Puts one learned token before the others: (batch, tokens, width) -> (batch, 1 + tokens, width)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="token")

    def call(self, tokens):
        batch, width = ops.shape(tokens)[0], ops.shape(tokens)[-1]
        token = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (batch, 1, width))
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        batch, tokens, width = input_shape
        return (batch, None if tokens is None else tokens + 1, width)


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector to each token position: (batch, tokens, width) -> the same shape."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]), initializer=keras.initializers.RandomNormal(stddev=0.02), name="embedding"
        )

    def call(self, tokens):
        return tokens + ops.cast(self.embedding, tokens.dtype)


def build_vit(
    patch_size: int = 7,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: int = 2,
    norm: str = "post",
    pool: str = "mean",
    dropout: float = 0.0,
    num_classes: int = len(CLASS_NAMES),
) -> keras.Model:
    """A vision transformer: patches -> `depth` blocks of self-attention and MLP -> pooled token -> Dense(10) logits.

    The image is cut into `patch_size` x `patch_size` patches, each embedded in `width` dimensions (a strided
    convolution: one Dense layer per patch), plus a learned position embedding. Each block is multi-head
    self-attention (`heads` heads of `width / heads` dimensions each) then an MLP (`mlp_ratio * width` GELU units
    -> `width`), each a residual branch:

        norm="post":  x = LN(x + f(x))           (the original transformer)
        norm="pre":   x = x + f(LN(x)), and LN(x) once after the last block

    `pool="cls"` classifies from a learned class token put before the patches, `pool="mean"` from the patches'
    mean. `dropout` > 0 drops out each residual branch's output (seeded by `keras.utils.set_random_seed`, as the
    weights are).

    Raises:
        ValueError: an argument out of range, a `patch_size` that does not divide the 28x28 image, or a `width`
            that is not a multiple of `heads`, naming the argument and the value received.
    """
    for name, value in (("patch_size", patch_size), ("width", width), ("depth", depth), ("heads", heads)):
        check_count(name, value, 1)
    check_count("mlp_ratio", mlp_ratio, 1)
    check_choice("norm", norm, NORMS)
    check_choice("pool", pool, POOLS)
    check_number("dropout", dropout, 0.0, 1.0, high_open=True)
    rows, cols = IMAGE_SHAPE
    if rows % patch_size or cols % patch_size:
        divisors = ", ".join(str(d) for d in range(1, min(rows, cols) + 1) if rows % d == 0 and cols % d == 0)
        raise ValueError(
            f"`patch_size` must divide the {rows}x{cols} image into whole patches: one of {divisors}. "
            f"Received: patch_size={patch_size}"
        )
    if width % heads:
        raise ValueError(
            f"`width` must be a multiple of `heads` (each head attends in width / heads dimensions). "
            f"Received: width={width}, heads={heads}"
        )
    patches = (rows // patch_size) * (cols // patch_size)

    images = keras.Input(shape=IMAGE_SHAPE)
    x = keras.layers.Reshape((rows, cols, 1))(images)
    x = keras.layers.Conv2D(width, patch_size, strides=patch_size, name="patch_embedding")(x)
    x = keras.layers.Reshape((patches, width))(x)
    if pool == "cls":
        x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    for block in range(depth):
        x = _residual(x, _attention(block, width, heads), norm, dropout, f"block{block}_attention")
        x = _residual(x, _mlp(block, width, mlp_ratio), norm, dropout, f"block{block}_mlp")
    if norm == "pre":
        x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="final_norm")(x)
    x = x[:, 0] if pool == "cls" else keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name="vit")


def _attention(block: int, width: int, heads: int):
    attention = keras.layers.MultiHeadAttention(heads, width // heads, name=f"block{block}_attention")
    return lambda x: attention(x, x)


def _mlp(block: int, width: int, mlp_ratio: int):
    hidden = keras.layers.Dense(mlp_ratio * width, activation="gelu", name=f"block{block}_mlp_hidden")
    out = keras.layers.Dense(width, name=f"block{block}_mlp_out")
    return lambda x: out(hidden(x))


def _residual(x, branch, norm: str, dropout: float, name: str):
    """One residual branch, its LayerNorm after the sum (post) or on the branch's input (pre)."""
    layer_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_norm")
    y = branch(layer_norm(x) if norm == "pre" else x)
    if dropout > 0:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    x = keras.layers.Add(name=f"{name}_residual")([x, y])
    return layer_norm(x) if norm == "post" else x
