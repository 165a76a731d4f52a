"""The fused pack of MLPs: K copies of a Flatten -> Dense ... -> Dense model as wide matrix products, on any backend.

Only what is written with `keras.ops` runs, so TensorFlow and JAX both train it; `lrsweep.ml.stacking` takes this
path for every model it fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from lrsweep.ml.packing import MemberBlocks, NotPackable


@dataclass(frozen=True)
class DenseSpec:
    units: int
    activation: Callable


def mlp_spec(model: keras.Model) -> tuple[tuple[int, ...], list[DenseSpec]]:
    """The input shape and Dense layers of a Flatten -> Dense ... -> Dense model, or NotPackable."""
    if not isinstance(model, keras.Sequential):
        raise NotPackable(f"the model is a {type(model).__name__}, not a keras.Sequential of Flatten and Dense layers")
    layers = list(model.layers)
    if not layers or not isinstance(layers[0], keras.layers.Flatten):
        raise NotPackable("the model does not start with a Flatten layer")
    dense = []
    for layer in layers[1:]:
        plain = (
            isinstance(layer, keras.layers.Dense)
            and layer.use_bias
            and layer.kernel_regularizer is None
            and layer.bias_regularizer is None
            and layer.activity_regularizer is None
            and layer.kernel_constraint is None
            and layer.bias_constraint is None
            and layer.lora_rank is None
        )
        if not plain:
            raise NotPackable(f"layer {layer.name} ({type(layer).__name__}) is not a plain biased Dense layer")
        dense.append(DenseSpec(layer.units, layer.activation))
    if not dense:
        raise NotPackable("the model has no Dense layer")
    return tuple(model.input_shape[1:]), dense


class PackedMLP(MemberBlocks, keras.Model):
    """K copies of one MLP, stacked: outputs (batch, K, classes), member k's from its own weights.

    Every train and test step also records each member's loss and accuracy (`MemberMetrics`).

    Members sit in data groups and blocks (`MemberBlocks`); a block's first layer is one wide kernel, its members'
    units side by side, so that a block's first layer is one matrix product (batch x inputs) @ (inputs x members *
    units), the GEMM the CPU runs fastest; later layers are batched per member.

    Args:
        input_shape: one example's shape, e.g. (28, 28).
        layers: the Dense layers, first to last.
        group_sizes: members per data group, in member order.
        block_sizes: members per block, in member order, each block inside one data group (default: one block per
            group).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        layers: Sequence[DenseSpec],
        group_sizes: Sequence[int],
        block_sizes: Sequence[int] | None = None,
        **kwargs,
    ):
        super().__init__(name="packed_mlp", **kwargs)
        self._lay_out(group_sizes, block_sizes)
        self.example_shape = tuple(input_shape)
        self.inputs_dim = int(np.prod(self.example_shape))
        self.dense = list(layers)
        self.kernels: list[list[keras.Variable]] = []  # per block, per layer
        self.biases: list[list[keras.Variable]] = []
        for block, size in enumerate(self.block_sizes):
            kernels, biases = [], []
            units_in = self.inputs_dim
            for depth, spec in enumerate(self.dense):
                # Zeros: every member's weights are set from its solo model's (`set_member_weights`).
                if depth == 0:  # one wide kernel: member g's units are columns g*units .. (g+1)*units - 1
                    kernels.append(
                        self.add_weight((units_in, size * spec.units), initializer="zeros", name=f"kernel_b{block}_0")
                    )
                    biases.append(self.add_weight((size * spec.units,), initializer="zeros", name=f"bias_b{block}_0"))
                else:
                    shape = (size, units_in, spec.units)
                    kernels.append(self.add_weight(shape, initializer="zeros", name=f"kernel_b{block}_{depth}"))
                    biases.append(
                        self.add_weight((size, spec.units), initializer="zeros", name=f"bias_b{block}_{depth}")
                    )
                units_in = spec.units
            self.kernels.append(kernels)
            self.biases.append(biases)
        self._index_variables()

    def _index_variables(self) -> None:
        positions = {id(v): (b, d, kind) for b in range(len(self.block_sizes))
                     for d in range(len(self.dense)) for kind, v in (("kernel", self.kernels[b][d]),
                                                                     ("bias", self.biases[b][d]))}  # fmt: skip
        self._variable_index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        self.variable_blocks.extend(positions[id(v)][0] for v in self.trainable_variables)
        for variable in self.trainable_variables:
            block, depth, kind = positions[id(variable)]
            offset, size, units = self.block_offsets[block], self.block_sizes[block], self.dense[depth].units
            if depth == 0:
                owner = offset + np.arange(size * units) // units
                self.member_maps.append(owner[None, :] if kind == "kernel" else owner)
                self._slices.append(_column_slice(units, kind, offset))
            else:
                owner = offset + np.arange(size)
                self.member_maps.append(owner[:, None, None] if kind == "kernel" else owner[:, None])
                self._slices.append(lambda array, k, offset=offset: array[k - offset])
        # The output biases' variable indices and member counts, per block: their gradients flag a bad loss.
        self.watch.extend(
            (self._variable_index[id(biases[-1])], size)
            for biases, size in zip(self.biases, self.block_sizes, strict=True)
        )

    def member_weights(self, member: int) -> list[np.ndarray]:
        """Member `member`'s weights in a solo model's order: kernel, bias of each Dense layer."""
        block = self.block_of(member)
        values = []
        for depth in range(len(self.dense)):
            for variable in (self.kernels[block][depth], self.biases[block][depth]):
                index = self._variable_index[id(variable)]
                values.append(self.member_values(index, ops.convert_to_numpy(variable), member))
        return values

    def member_variables(self, member: int) -> list[np.ndarray]:
        """Member `member`'s variables in its solo model's `solo_variables` order (an MLP's are its weights)."""
        return [np.array(value) for value in self.member_weights(member)]

    def set_member_weights(self, weights: Sequence[Sequence[np.ndarray]]) -> None:
        """Sets every member's weights from a solo model's weight lists (kernel, bias per layer), member order."""
        for block, size in enumerate(self.block_sizes):
            members = [weights[self.block_offsets[block] + g] for g in range(size)]
            for depth in range(len(self.dense)):
                kernels = [m[2 * depth] for m in members]
                biases = [m[2 * depth + 1] for m in members]
                if depth == 0:
                    self.kernels[block][depth].assign(np.concatenate(kernels, axis=1))
                    self.biases[block][depth].assign(np.concatenate(biases))
                else:
                    self.kernels[block][depth].assign(np.stack(kernels))
                    self.biases[block][depth].assign(np.stack(biases))

    def call(self, x):
        shared = len(x.shape) == 1 + len(self.example_shape)
        outputs = []
        for block, size in enumerate(self.block_sizes):
            inputs = x if shared else x[:, self.block_groups[block]]
            h = ops.reshape(inputs, (-1, self.inputs_dim))
            for depth, spec in enumerate(self.dense):
                kernel, bias = self.kernels[block][depth], self.biases[block][depth]
                if depth == 0:
                    h = ops.reshape(ops.matmul(h, kernel) + bias, (-1, size, spec.units))
                else:
                    h = ops.einsum("bgi,gio->bgo", h, kernel) + bias
                h = spec.activation(h)
            outputs.append(h)
        return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)


def _column_slice(units: int, kind: str, offset: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def columns(array: np.ndarray, member: int) -> np.ndarray:
        span = slice((member - offset) * units, (member - offset + 1) * units)
        return array[:, span] if kind == "kernel" else array[span]

    return columns
