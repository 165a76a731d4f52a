"""Packs: several runs of one model trained as one Keras model, one `fit`, each member still its own.

What every kind of pack shares: how members sit in it (`MemberBlocks`), their loss and metrics, their LRs side by
side (`PackSchedule`) and their optimizers side by side (`PackedOptimizer`). The kinds: the fused MLP
(`lrsweep.ml.packed_mlp`) and any Keras model mapped over its members (`lrsweep.ml.vmapped`, JAX);
`lrsweep.ml.stacking` chooses.

Member k of a pack starts from the weights its solo run would build for its seed, sees its batches in the order
its seed gives (`lrsweep.ml.training`), and is updated by its own Keras optimizer's `update_step` (members may use
different optimizers: Adam, Adagrad and Adadelta runs share one pack) with its own learning rate, the member's
schedule evaluated at the pack's step inside the compiled step. Optimizer state is elementwise, so each member's
slots are its own slices of its optimizer's stacked slot variables.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

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


def solo_variables(model: keras.Model) -> list[keras.Variable]:
    """A solo model's variables, trainable then non-trainable (BatchNorm statistics, random states): the order
    `stateless_call` takes them in, and a pack member's state (`MemberBlocks.member_variables`) follows."""
    return [*model.trainable_variables, *model.non_trainable_variables]


class NotPackable(ValueError):
    """This run cannot join a pack (it trains alone instead); the message says why."""


def check_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Raises NotPackable unless each member's update depends only on its own slice of variables and state."""
    if type(optimizer) not in PACKABLE_OPTIMIZERS:
        names = ", ".join(cls.__name__ for cls in PACKABLE_OPTIMIZERS)
        raise NotPackable(f"{type(optimizer).__name__} is not one of the packable optimizers ({names})")
    used = {k: getattr(optimizer, k) for k in ACROSS_MEMBERS if getattr(optimizer, k)}
    if used:
        raise NotPackable(f"the optimizer sets {used}, which act on whole variables, across members")


class MemberBlocks:
    """How a pack's members sit in it, for every kind of pack (mixed in before `keras.Model`).

    Members are ordered by seed; members with one seed form a data group (they see the same batches) and, within a
    group, members with one optimizer form a block with variables of its own, so that each optimizer updates only
    its members' variables (`PackedOptimizer`). Training inputs hold one batch per data group, (batch, groups,
    *input_shape); validation inputs are shared, (batch, *input_shape). Outputs are (batch, members, classes).

    A pack model calls `_lay_out` in its constructor, then sets per trainable variable (in `trainable_variables`
    order) `member_maps` (the member each entry belongs to, broadcastable to it), `variable_blocks` and `_slices`
    (member k's part of an array of the variable's shape), and `watch`: per block, the index of a variable whose
    gradient is not finite when a member's loss is not (its output bias), and the block's member count.
    """

    def _lay_out(self, group_sizes: Sequence[int], block_sizes: Sequence[int] | None) -> None:
        self.group_sizes = list(group_sizes)
        self.block_sizes = list(block_sizes or group_sizes)
        self.members = sum(self.group_sizes)
        self.offsets = np.cumsum([0, *self.group_sizes])[:-1].tolist()
        self.block_offsets = np.cumsum([0, *self.block_sizes])[:-1].tolist()
        self.block_groups = [self.group_of(offset) for offset in self.block_offsets]  # each block's data group
        for offset, size, group in zip(self.block_offsets, self.block_sizes, self.block_groups, strict=True):
            if sum(self.block_sizes) != self.members or offset + size > self.offsets[group] + self.group_sizes[group]:
                raise ValueError(f"blocks {self.block_sizes} do not divide the data groups {self.group_sizes}")
        self.member_maps: list[np.ndarray] = []
        self.variable_blocks: list[int] = []
        self._slices: list[Callable[[np.ndarray, int], np.ndarray]] = []
        self.watch: list[tuple[int, int]] = []
        self.member_metrics = MemberMetrics(self.group_sizes)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.member_metrics.update_state(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def group_of(self, member: int) -> int:
        return int(np.searchsorted(self.offsets, member, side="right") - 1)

    def block_of(self, member: int) -> int:
        return int(np.searchsorted(self.block_offsets, member, side="right") - 1)

    def member_values(self, variable_index: int, array: np.ndarray, member: int) -> np.ndarray:
        """Member `member`'s part of the array of trainable variable `variable_index` (or of a slot of it)."""
        if self.block_of(member) != self.variable_blocks[variable_index]:
            return array[:0]
        return self._slices[variable_index](array, member)

    def put_member_values(self, variable_index: int, array: np.ndarray, member: int, values: np.ndarray) -> None:
        """Writes member `member`'s part of `array` (a NumPy copy of trainable variable `variable_index` or of a slot
        of it), in place: the inverse of `member_values`."""
        self._slices[variable_index](array, member)[...] = values

    def member_variables(self, member: int) -> list[np.ndarray]:
        """Member `member`'s variables as its solo model holds them, in `solo_variables` order."""
        raise NotImplementedError

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

    def build_optimizer(
        self,
        optimizers: Sequence[keras.optimizers.Optimizer],
        learning_rate: PackSchedule,
        step_offsets: Sequence[int] | None = None,
    ) -> PackedOptimizer:
        """Each member's optimizer (class and settings: `optimizers`, member order), applied with its own LR
        (`learning_rate`: K values), each member `step_offsets[k]` steps ahead of the pack. Members of one block
        must share an optimizer key and a step offset."""
        return PackedOptimizer(learning_rate, optimizers, self, step_offsets)


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


class Shifted(keras.optimizers.schedules.LearningRateSchedule):
    """A member's schedule for a pack it joined `offset` steps into its own training: lr(step + offset).

    A member that has trained longer than the pack's other members (it went on from another pack) keeps its own
    step count this way: the pack's step is the youngest member's."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, offset: int):
        super().__init__()
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "offset": self.offset}


def shifted(
    schedule: keras.optimizers.schedules.LearningRateSchedule, offset: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """`schedule` for a member `offset` steps ahead of its pack (itself when the offset is 0)."""
    return Shifted(schedule, offset) if offset else schedule


def optimizer_key(optimizer: keras.optimizers.Optimizer) -> str:
    """The class and settings of an optimizer, its LR and name aside: members with equal keys share one optimizer."""
    settings = {k: v for k, v in optimizer.get_config().items() if k not in ("name", "learning_rate")}
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}{sorted(settings.items())}"


class PackedOptimizer(keras.optimizers.Optimizer):
    """The members' own optimizers applied side by side, each member with its own LR, in one update.

    Members with the same optimizer class and settings and the same step offset share one optimizer (`optimizer_key`);
    a pack of Adam, Adagrad and Adadelta runs has three. Each is built on the variables of its members' blocks
    (`PackedMLP`) and updates those alone, so its slots hold its members' state; its step count is the pack's plus
    its members' offset (Adam's bias correction reads it): members that joined the pack with more steps behind them
    (an asynchronous search refills a freed place with a new run) each keep their own count.

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
        step_offsets: per member, the steps it had taken when the pack's count was 0 (None: all 0).
    """

    def __init__(
        self,
        learning_rate: PackSchedule,
        optimizers: Sequence[keras.optimizers.Optimizer],
        model: MemberBlocks,
        step_offsets: Sequence[int] | None = None,
        name: str = "packed",
    ):
        super().__init__(learning_rate=learning_rate, name=name)
        self.member_offsets = [int(o) for o in step_offsets] if step_offsets is not None else [0] * len(optimizers)
        keys = [(optimizer_key(o), offset) for o, offset in zip(optimizers, self.member_offsets, strict=True)]
        distinct = list(dict.fromkeys(keys))
        self.optimizers = [optimizers[keys.index(key)] for key in distinct]  # the first member's with each key
        self.optimizer_offsets = [offset for _, offset in distinct]  # each optimizer's step offset
        self.member_optimizer = [distinct.index(key) for key in keys]
        for offset, size in zip(model.block_offsets, model.block_sizes, strict=True):
            if len(set(self.member_optimizer[offset : offset + size])) != 1:
                raise ValueError(
                    f"members {offset} to {offset + size - 1} share a block but not an optimizer and step offset"
                )
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
        for optimizer, offset in zip(self.optimizers, self.optimizer_offsets, strict=True):
            optimizer.iterations.assign(self.iterations + offset)  # what its update reads (Adam: t = iterations + 1)
        for grad, variable in zip(grads, trainable_variables, strict=True):
            index = keras_adapter.variable_index(self, variable)
            optimizer = self.optimizers[self.variable_optimizer[index]]
            # With a zero gradient and LR these optimizers leave a variable as it is; momentum would still move it.
            restore = bool(getattr(optimizer, "momentum", 0))
            owners = self.member_maps[index]
            keep = ops.take(alive, owners) > 0
            before = ops.convert_to_tensor(variable) if restore else None
            grad = ops.where(keep, grad, ops.zeros_like(grad))
            optimizer.update_step(grad, variable, ops.take(learning_rate, owners))
            if restore:
                optimizer.assign(variable, ops.where(keep, ops.convert_to_tensor(variable), before))
        for optimizer, offset in zip(self.optimizers, self.optimizer_offsets, strict=True):
            optimizer.iterations.assign(self.iterations + 1 + offset)  # its count after this update, for readers


# The per-member update replaces the one method Keras applies every variable's update in.
setattr(PackedOptimizer, keras_adapter.UPDATE_STEP_METHOD, PackedOptimizer.update_per_member)


def seed_groups(seeds: Sequence[int], starts: Sequence[int] | None = None) -> list[int]:
    """Sizes of the data groups: runs of members with equal seeds (and equal `starts`, the epochs each had trained
    before the pack: members of one seed at different epochs see different orders), which must be sorted."""
    keys = list(zip(seeds, starts or [0] * len(seeds), strict=True))
    if keys != sorted(keys):
        raise ValueError(f"a pack's members must be ordered by seed (then start). Received: {keys}")
    return runs_of(keys)


def runs_of(keys: Sequence[object]) -> list[int]:
    """Sizes of the runs of equal keys, in order: [a, a, b, a] gives [2, 1, 1]."""
    return [len(list(run)) for _, run in itertools.groupby(keys)]


def blocks_of(
    seeds: Sequence[int], optimizers: Sequence[keras.optimizers.Optimizer], starts: Sequence[int] | None = None
) -> list[int]:
    """Block sizes: members of one data group (`seed_groups`) with one optimizer (ordered by seed, then start,
    then optimizer: `lrsweep.run.launching`)."""
    starts = starts or [0] * len(seeds)
    return runs_of([(s, start, optimizer_key(o)) for s, start, o in zip(seeds, starts, optimizers, strict=True)])
