"""Any Keras model as a pack: each block's members' variables stacked on a leading axis, and the model's own
`stateless_call` run per member, either mapped over them with `jax.vmap` (JAX) or unrolled, one copy per member in
the compiled step (both backends).

Member k's forward pass is its solo model's, on its own weights, BatchNorm statistics and random state (all of
them variables of the model, stacked here), so it trains as its solo run does, to float rounding: XLA may order a
batched convolution's sums otherwise (unrolled, each member's computation is its solo run's). Works for Sequential,
functional and subclassed models built from Keras layers, once built (their variables exist);
`lrsweep.ml.stacking` takes this path for what the fused MLP (`lrsweep.ml.packed_mlp`) does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from lrsweep.ml import keras_adapter
from lrsweep.ml.packing import MemberBlocks, NotPackable, solo_variables


def check_model(model: keras.Model) -> None:
    """Raises NotPackable unless the model can be mapped over its members: built, without added losses, logits
    out as (batch, classes)."""
    if not model.built or not model.trainable_variables:
        raise NotPackable(f"the model {model.name} has no weights until it is first called (give it a keras.Input)")
    regularized = [
        layer.name
        for layer in keras_adapter.sublayers(model)
        if any(getattr(layer, f"{kind}_regularizer", None) is not None for kind in ("kernel", "bias", "activity"))
    ]
    if regularized:
        raise NotPackable(f"layers {regularized} add regularization losses, which a pack does not keep per member")
    shape = model.compute_output_shape((None, *model.input_shape[1:]))
    if len(shape) != 2:
        raise NotPackable(f"the model's output is {shape}, not logits (batch, classes)")


def _variables(model: keras.Model) -> list[keras.Variable]:
    """The model's variables in the order `stateless_call` takes them: trainable, then non-trainable."""
    return solo_variables(model)


class _Held:
    """Holds the template model out of Keras' tracking: its variables are not the pack's."""

    def __init__(self, model: keras.Model):
        self.model = model


class VmappedPack(MemberBlocks, keras.Model):
    """K copies of any built Keras model: per block, every variable stacked (members, *shape), and the model's
    `stateless_call` mapped over the members. Outputs (batch, K, classes), member k's from its own variables.

    Args:
        solo_models: each member's model as its solo run builds it (one architecture), in member order.
        group_sizes: members per data group, in member order.
        block_sizes: members per block (`MemberBlocks`).
    """

    def __init__(
        self,
        solo_models: Sequence[keras.Model],
        group_sizes: Sequence[int],
        block_sizes: Sequence[int] | None = None,
        unroll: bool = False,
    ):
        super().__init__(name=f"vmapped_{solo_models[0].name}")
        self.unroll = unroll or keras.backend.backend() != "jax"
        self._lay_out(group_sizes, block_sizes)
        template = solo_models[0]
        self._template = _Held(template)
        self.example_shape = tuple(template.input_shape[1:])
        self.stacked: list[list[keras.Variable]] = []  # per block: trainable, then non-trainable, as the template's
        self._trainable_count = len(template.trainable_variables)
        own = _variables(template)
        for block, size in enumerate(self.block_sizes):
            trainable = [j < self._trainable_count for j in range(len(own))]
            self.stacked.append([
                self.add_weight((size, *v.shape), initializer="zeros", dtype=v.dtype, trainable=trainable[j],
                                name=f"b{block}_{j}_{v.name}")
                for j, v in enumerate(own)
            ])  # fmt: skip
            members = [_variables(m) for m in solo_models[self.block_offsets[block] :][:size]]
            for j, variable in enumerate(self.stacked[block]):
                variable.assign(np.stack([ops.convert_to_numpy(m[j]) for m in members]))
        # A solo model's weights (`get_weights` order) by their place among the stacked variables.
        position = {id(v): j for j, v in enumerate(own)}
        self._weight_order = [position[id(v)] for v in template.weights]
        index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        for block, size in enumerate(self.block_sizes):
            offset = self.block_offsets[block]
            for variable in self.stacked[block][: self._trainable_count]:
                self.member_maps.append((offset + np.arange(size)).reshape((size,) + (1,) * (len(variable.shape) - 1)))
                self.variable_blocks.append(block)
                self._slices.append(lambda array, k, offset=offset: array[k - offset])
            # The last trainable variable (the output layer's bias or kernel): not finite when a member's loss is not.
            self.watch.append((index[id(self.stacked[block][self._trainable_count - 1])], size))
        if [index[id(v)] for block in self.stacked for v in block[: self._trainable_count]] != list(range(len(index))):
            raise NotPackable("Keras listed the pack's variables out of the order they were made in")

    def member_weights(self, member: int) -> list[np.ndarray]:
        """Member `member`'s weights in its solo model's `get_weights` order."""
        block = self.block_of(member)
        values = [ops.convert_to_numpy(v)[member - self.block_offsets[block]] for v in self.stacked[block]]
        return [values[j] for j in self._weight_order]

    def member_variables(self, member: int) -> list[np.ndarray]:
        """Member `member`'s variables in its solo model's `solo_variables` order: its weights, BatchNorm statistics
        and random states."""
        block = self.block_of(member)
        return [np.array(ops.convert_to_numpy(v)[member - self.block_offsets[block]]) for v in self.stacked[block]]

    def call(self, x, training=False):
        template = self._template.model
        shared = len(x.shape) == 1 + len(self.example_shape)
        outputs = []
        for block, variables in enumerate(self.stacked):
            inputs = x if shared else x[:, self.block_groups[block]]

            def member(trainable, non_trainable, inputs=inputs):
                return template.stateless_call(trainable, non_trainable, inputs, training=training)

            values = [ops.convert_to_tensor(v) for v in variables]
            trainable, non_trainable = values[: self._trainable_count], values[self._trainable_count :]
            if self.unroll:  # one copy of the model per member in the step: each the solo run's computation
                each = [
                    member([v[i] for v in trainable], [v[i] for v in non_trainable])
                    for i in range(self.block_sizes[block])
                ]
                logits = ops.stack([out for out, _ in each])
                updated = [ops.stack([new[j] for _, new in each]) for j in range(len(non_trainable))]
            else:
                import jax  # JAX only: the TensorFlow backend always unrolls

                logits, updated = jax.vmap(member)(trainable, non_trainable)
            if training:  # BatchNorm's moving statistics, random states: each member's own
                for variable, value in zip(variables[self._trainable_count :], updated, strict=True):
                    variable.assign(value)
            outputs.append(ops.transpose(logits, (1, 0, 2)))
        return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
