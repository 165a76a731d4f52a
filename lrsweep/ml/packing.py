"""Packs: several runs of one model stacked into one Keras model, one `fit`, each member still its own.

Member k of a pack starts from the weights its solo run would build for its seed, sees its batches in the order
its seed gives (`lrsweep.ml.training`), and is updated by its own Keras optimizer's `update_step` (members may use
different optimizers: Adam, Adagrad and Adadelta runs share one pack) with its own learning rate, the member's
schedule evaluated at the pack's step inside the compiled step. Optimizer state is elementwise, so each member's
slots are its own slices of its optimizer's stacked slot variables.

Layout: members are ordered by seed; members with the same seed form a data group and share its batches, so the
first layer of a group is one wide matrix product (batch x inputs) @ (inputs x members * units), the GEMM the
CPU runs fastest; later layers are batched per member. Only what is written with `keras.ops` runs, on any backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from lrsweep.ml import keras_adapter

# Optimizers whose update is elementwise in the variable, LR and state: a member's update depends on its slice only.
PACKABLE_OPTIMIZERS = (
    keras.optimizers.SGD,
    keras.optimizers.Adam,
    keras.optimizers.Adagrad,
    keras.optimizers.Adadelta,
    keras.optimizers.RMSprop,
)


# Optimizer settings that act on whole variables, so across members: a pack's members must all leave them unset.
ACROSS_MEMBERS = ("weight_decay", "clipnorm", "global_clipnorm", "use_ema", "gradient_accumulation_steps")


class NotPackable(ValueError):
    """This run cannot join a pack (it trains alone instead); the message says why."""


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


def check_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Raises NotPackable unless each member's update depends only on its own slice of variables and state."""
    if type(optimizer) not in PACKABLE_OPTIMIZERS:
        names = ", ".join(cls.__name__ for cls in PACKABLE_OPTIMIZERS)
        raise NotPackable(f"{type(optimizer).__name__} is not one of the packable optimizers ({names})")
    used = {k: getattr(optimizer, k) for k in ACROSS_MEMBERS if getattr(optimizer, k)}
    if used:
        raise NotPackable(f"the optimizer sets {used}, which act on whole variables, across members")


class PackedMLP(keras.Model):
    """K copies of one MLP, stacked: outputs (batch, K, classes), member k's from its own weights.

    Every train and test step also records each member's loss and accuracy (`MemberMetrics`).

    Members come in data groups (one seed: the same batches) and, within a group, in blocks (one optimizer): each
    block has variables of its own, its members side by side, so that each optimizer updates only its members'
    variables. Training inputs hold one batch per data group, (batch, groups, *input_shape); validation inputs are
    shared, (batch, *input_shape).

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
        self.example_shape = tuple(input_shape)
        self.inputs_dim = int(np.prod(self.example_shape))
        self.dense = list(layers)
        self.group_sizes = list(group_sizes)
        self.block_sizes = list(block_sizes or group_sizes)
        self.members = sum(self.group_sizes)
        self.offsets = np.cumsum([0, *self.group_sizes])[:-1].tolist()
        self.block_offsets = np.cumsum([0, *self.block_sizes])[:-1].tolist()
        self.block_groups = [self.group_of(offset) for offset in self.block_offsets]  # each block's data group
        for offset, size, group in zip(self.block_offsets, self.block_sizes, self.block_groups, strict=True):
            if sum(self.block_sizes) != self.members or offset + size > self.offsets[group] + self.group_sizes[group]:
                raise ValueError(f"blocks {self.block_sizes} do not divide the data groups {self.group_sizes}")
        self.kernels: list[list[keras.Variable]] = []  # per block, per layer
        self.biases: list[list[keras.Variable]] = []
        # Per variable (in `trainable_variables` order): the member each entry belongs to, broadcastable to it.
        self.member_maps: list[np.ndarray] = []
        self._slices: list[Callable[[np.ndarray, int], np.ndarray]] = []
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
        self.member_metrics = MemberMetrics(self.group_sizes)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.member_metrics.update_state(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _index_variables(self) -> None:
        positions = {id(v): (b, d, kind) for b in range(len(self.block_sizes))
                     for d in range(len(self.dense)) for kind, v in (("kernel", self.kernels[b][d]),
                                                                     ("bias", self.biases[b][d]))}  # fmt: skip
        self._variable_index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        self.variable_blocks = [positions[id(v)][0] for v in self.trainable_variables]
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
        self.watch = [
            (self._variable_index[id(biases[-1])], size)
            for biases, size in zip(self.biases, self.block_sizes, strict=True)
        ]

    def group_of(self, member: int) -> int:
        return int(np.searchsorted(self.offsets, member, side="right") - 1)

    def block_of(self, member: int) -> int:
        return int(np.searchsorted(self.block_offsets, member, side="right") - 1)

    def block_variables(self, blocks: Sequence[int]) -> list[keras.Variable]:
        """The trainable variables of these blocks, in `trainable_variables` order."""
        return [v for v, b in zip(self.trainable_variables, self.variable_blocks, strict=True) if b in blocks]

    def member_values(self, variable_index: int, array: np.ndarray, member: int) -> np.ndarray:
        """Member `member`'s part of the array of trainable variable `variable_index` (or of a slot of it)."""
        if self.block_of(member) != self.variable_blocks[variable_index]:
            return array[:0]
        return self._slices[variable_index](array, member)

    def member_weights(self, member: int) -> list[np.ndarray]:
        """Member `member`'s weights in a solo model's order: kernel, bias of each Dense layer."""
        block = self.block_of(member)
        values = []
        for depth in range(len(self.dense)):
            for variable in (self.kernels[block][depth], self.biases[block][depth]):
                index = self._variable_index[id(variable)]
                values.append(self.member_values(index, ops.convert_to_numpy(variable), member))
        return values

    def member_selector(
        self, member: int, variables: Sequence[int] | None = None
    ) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        """Member `member`'s values of a list of optimizer slot values, one per trainable variable (or per one of
        `variables`, indices into `trainable_variables`), flattened."""
        indices = range(len(self.trainable_variables)) if variables is None else variables

        def select(arrays: Sequence[np.ndarray]) -> np.ndarray:
            parts = [self.member_values(i, array, member) for i, array in zip(indices, arrays, strict=True)]
            return np.concatenate([np.ravel(p) for p in parts]).astype(np.float64)

        return select

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

    def build_optimizer(
        self, optimizers: Sequence[keras.optimizers.Optimizer], learning_rate: PackSchedule
    ) -> PackedOptimizer:
        """Each member's optimizer (class and settings: `optimizers`, member order), applied with its own LR
        (`learning_rate`: K values). Members of one block must share an optimizer key."""
        return PackedOptimizer(learning_rate, optimizers, self)


def _column_slice(units: int, kind: str, offset: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def columns(array: np.ndarray, member: int) -> np.ndarray:
        span = slice((member - offset) * units, (member - offset + 1) * units)
        return array[:, span] if kind == "kernel" else array[span]

    return columns


def member_labels(y_true, group_sizes: Sequence[int]):
    """Labels per member (batch, K) from labels per data group (batch, groups) or shared labels (batch,)."""
    y = ops.cast(y_true, "int32")
    members = sum(group_sizes)
    if len(y.shape) == 1:
        return ops.broadcast_to(y[:, None], (ops.shape(y)[0], members))
    group = np.repeat(np.arange(len(group_sizes)), group_sizes)
    return ops.take(y, group, axis=1)


class PackedLoss(keras.losses.Loss):
    """Each member's mean cross-entropy, summed: every member's gradient is its solo run's gradient."""

    def __init__(self, group_sizes: Sequence[int], name: str = "packed_crossentropy"):
        super().__init__(name=name)
        self.group_sizes = list(group_sizes)

    def call(self, y_true, y_pred):
        labels = member_labels(y_true, self.group_sizes)
        return ops.sum(keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True), axis=1)


class MemberMetrics(keras.metrics.Metric):
    """Each member's mean loss and accuracy over the epoch, as `loss_<k>` and `accuracy_<k>` in Keras' logs."""

    def __init__(self, group_sizes: Sequence[int], name: str = "members"):
        super().__init__(name=name)
        self.group_sizes = list(group_sizes)
        members = sum(self.group_sizes)
        self.total_loss = self.add_variable((members,), initializer="zeros", name="total_loss")
        self.correct = self.add_variable((members,), initializer="zeros", name="correct")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = member_labels(y_true, self.group_sizes)
        loss = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
        hits = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), labels), "float32")
        self.total_loss.assign_add(ops.sum(loss, axis=0))
        self.correct.assign_add(ops.sum(hits, axis=0))
        self.count.assign_add(ops.cast(ops.shape(labels)[0], "float32"))

    def result(self):
        losses = self.total_loss / self.count
        accuracies = self.correct / self.count
        results = {}
        for k in range(sum(self.group_sizes)):
            results[f"loss_{k}"] = losses[k]
            results[f"accuracy_{k}"] = accuracies[k]
        return results


class PackSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The members' schedules side by side: lr(step) is a vector, member k's LR at `step` in entry k."""

    def __init__(self, schedules: Sequence[keras.optimizers.schedules.LearningRateSchedule]):
        super().__init__()
        self.schedules = list(schedules)

    def __call__(self, step):
        return ops.stack([ops.cast(schedule(step), "float32") for schedule in self.schedules])

    def get_config(self):
        return {"schedules": [keras.saving.serialize_keras_object(s) for s in self.schedules]}


def optimizer_key(optimizer: keras.optimizers.Optimizer) -> str:
    """The class and settings of an optimizer, its LR and name aside: members with equal keys share one optimizer."""
    settings = {k: v for k, v in optimizer.get_config().items() if k not in ("name", "learning_rate")}
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}{sorted(settings.items())}"


class PackedOptimizer(keras.optimizers.Optimizer):
    """The members' own optimizers applied side by side, each member with its own LR, in one update.

    Members with the same optimizer class and settings share one optimizer (`optimizer_key`); a pack of Adam,
    Adagrad and Adadelta runs has three. Each is built on the variables of its members' blocks (`PackedMLP`) and
    updates those alone, so its slots hold its members' state; its step count is the pack's (Adam's bias correction
    reads it).

    The LR (a vector, one entry per member: `PackSchedule`) reaches `update_step` shaped to broadcast against each
    variable, so each optimizer's own formula applies member k's LR to member k's entries. A member whose output
    bias gradient is not finite (its loss is NaN or infinite: the logits were) is marked dead in that step, and its
    entries of every variable are left exactly as they were, from then on: its gradient and LR are zero, which
    leaves a variable unchanged in every packable optimizer except where momentum would still move it, and there
    the update is undone. Its NaNs never reach the optimizer's state, nor the others, which share no entry with it.

    Args:
        learning_rate: the members' LRs (`PackSchedule`).
        optimizers: each member's optimizer, in member order (their own LRs are not used); the members of one
            block of `model` must have equal `optimizer_key`s.
        model: the pack.
    """

    def __init__(
        self,
        learning_rate: PackSchedule,
        optimizers: Sequence[keras.optimizers.Optimizer],
        model: PackedMLP,
        name: str = "packed",
    ):
        super().__init__(learning_rate=learning_rate, name=name)
        keys = [optimizer_key(o) for o in optimizers]
        distinct = list(dict.fromkeys(keys))
        self.optimizers = [optimizers[keys.index(key)] for key in distinct]  # the first member's with each key
        self.member_optimizer = [distinct.index(key) for key in keys]
        for offset, size in zip(model.block_offsets, model.block_sizes, strict=True):
            if len(set(self.member_optimizer[offset : offset + size])) != 1:
                raise ValueError(f"members {offset} to {offset + size - 1} share a block but not an optimizer")
        block_optimizer = [self.member_optimizer[offset] for offset in model.block_offsets]
        # Per trainable variable of the model: the optimizer that updates it.
        self.variable_optimizer = [block_optimizer[block] for block in model.variable_blocks]
        # Each optimizer's variables, as indices into the model's `trainable_variables` (Keras would track a list
        # of the variables themselves as this optimizer's own): the order its slot lists follow.
        self.optimizer_variables = [
            [index for index, o in enumerate(self.variable_optimizer) if o == i] for i in range(len(self.optimizers))
        ]
        self.members = model.members
        self.member_maps = [np.asarray(m, dtype="int32") for m in model.member_maps]
        self.watch = list(model.watch)

    def of_member(self, member: int) -> tuple[keras.optimizers.Optimizer, list[int]]:
        """The optimizer that updates member `member` (its slots hold the member's state) and the variables it is
        built on, one per entry of each of its slot lists, as indices into the model's `trainable_variables`."""
        i = self.member_optimizer[member]
        return self.optimizers[i], self.optimizer_variables[i]

    @property
    def variables(self):
        # As Keras' LossScaleOptimizer does for its inner optimizer: the members' optimizers' state is this one's.
        return self._variables + [v for optimizer in self.optimizers for v in optimizer.variables]

    def build(self, variables):
        super().build(variables)
        for optimizer, own in zip(self.optimizers, self.optimizer_variables, strict=True):
            optimizer.build([variables[index] for index in own])
        self.alive = self.add_variable((self.members,), initializer="ones", name="alive")

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError("a pack's update is its members' optimizers' (`update_per_member`)")

    def update_per_member(self, grads, trainable_variables, learning_rate):
        finite = [ops.all(ops.isfinite(ops.reshape(grads[i], (size, -1))), axis=1) for i, size in self.watch]
        finite = finite[0] if len(finite) == 1 else ops.concatenate(finite)
        alive = self.alive * ops.cast(finite, self.alive.dtype)
        self.alive.assign(alive)
        learning_rate = ops.cast(learning_rate, "float32") * alive
        for i, optimizer in enumerate(self.optimizers):
            optimizer.iterations.assign(self.iterations)  # what its update reads (Adam: t = iterations + 1)
            # With a zero gradient and LR these optimizers leave a variable as it is; momentum would still move it.
            restore = bool(getattr(optimizer, "momentum", 0))
            for grad, variable in zip(grads, trainable_variables, strict=True):
                index = keras_adapter.variable_index(self, variable)
                if self.variable_optimizer[index] != i:
                    continue
                owners = self.member_maps[index]
                keep = ops.take(alive, owners) > 0
                before = ops.convert_to_tensor(variable) if restore else None
                optimizer.update_step(
                    ops.where(keep, grad, ops.zeros_like(grad)), variable, ops.take(learning_rate, owners)
                )
                if restore:
                    optimizer.assign(variable, ops.where(keep, ops.convert_to_tensor(variable), before))
            optimizer.iterations.assign(self.iterations + 1)  # the pack's count after this update, for readers


# The per-member update replaces the one method Keras applies every variable's update in.
setattr(PackedOptimizer, keras_adapter.UPDATE_STEP_METHOD, PackedOptimizer.update_per_member)


def seed_groups(seeds: Sequence[int]) -> list[int]:
    """Sizes of the runs of equal seeds in `seeds` (which must be sorted by seed)."""
    if list(seeds) != sorted(seeds):
        raise ValueError(f"a pack's members must be ordered by seed. Received: seeds={list(seeds)}")
    return runs_of(seeds)


def runs_of(keys: Sequence[Any]) -> list[int]:
    """Sizes of the runs of equal keys, in order: [a, a, b, a] gives [2, 1, 1]."""
    return [len(list(run)) for _, run in itertools.groupby(keys)]


@dataclass
class PackPlan:
    """The model and optimizer a pack trains with, built from its members' own models, schedules and optimizer."""

    model: PackedMLP
    schedules: list[keras.optimizers.schedules.LearningRateSchedule]  # member k's LR schedule
    seeds: list[int]  # one per data group: the order of examples its members see
    optimizer: PackedOptimizer  # the pack's; `optimizer.of_member(k)` holds member k's state


def stack(
    solo_models: Sequence[keras.Model],
    seeds: Sequence[int],
    schedules: Sequence[keras.optimizers.schedules.LearningRateSchedule],
    optimizers: Sequence[keras.optimizers.Optimizer],
    compile_args: dict[str, Any],
) -> PackPlan:
    """Stacks the members' solo models (ordered by seed), member k starting from exactly solo model k's weights.

    Args:
        solo_models: each member's model as its solo run builds it, initial weights included.
        seeds: each member's seed, sorted.
        schedules: each member's LR schedule.
        optimizers: each member's optimizer, its class and settings (its LR is ignored): members may differ.
        compile_args: further `compile` arguments (`steps_per_execution`, `jit_compile`).

    Raises:
        NotPackable: when the model or optimizer cannot be packed (the members then train alone).
    """
    input_shape, layers = mlp_spec(solo_models[0])
    for optimizer in optimizers:
        check_optimizer(optimizer)
    # A block: members of one seed with one optimizer (ordered by seed, then optimizer: `lrsweep.run.launching`).
    blocks = runs_of([(seed, optimizer_key(o)) for seed, o in zip(seeds, optimizers, strict=True)])
    model = PackedMLP(input_shape, layers, seed_groups(seeds), blocks)
    model.set_member_weights([m.get_weights() for m in solo_models])
    optimizer = model.build_optimizer(optimizers, PackSchedule(schedules))
    model.compile(optimizer=optimizer, loss=PackedLoss(model.group_sizes), **compile_args)
    return PackPlan(model, list(schedules), [seeds[offset] for offset in model.offsets], optimizer)
