"""A pack built from its members' solo models: the fused MLP where the model is one, else any Keras model mapped
over its members (by jax.vmap, or unrolled: one copy per member); anything else trains alone (`NotPackable`, with
the reason)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras

from lrsweep.ml.packed_mlp import PackedMLP, mlp_spec
from lrsweep.ml.packing import (
    MemberBlocks,
    NotPackable,
    PackedLoss,
    PackedOptimizer,
    PackSchedule,
    blocks_of,
    check_optimizer,
    seed_groups,
    shifted,
)
from lrsweep.ml.vmapped import VmappedPack, check_model

FUSED = "fused MLP (one wide matrix product per seed and optimizer)"
VMAPPED = "jax.vmap over the model's stateless_call"
UNROLLED = "one copy of the model's stateless_call per member in the step"


OTHER_MODELS = ("auto", "vmap", "unroll", "alone")


def other_models_path(other_models: str) -> str | None:
    """How a model other than the fused MLP packs under `hydra.launcher.other_models`: "vmap", "unroll" or None
    (alone). "auto": unrolled on TensorFlow, vmapped on a JAX GPU or TPU, alone on a JAX CPU. Measured on this
    2-core CPU (scripts/bench_packed.py --parts models, 3 runs): unrolled packs of 4 ran at 0.94-1.57x the speed of
    one at a time on TensorFlow, and 1.1-1.2x slower on JAX; vmapped ones slower on JAX (the CNN's
    convolutions become grouped ones, which XLA's CPU backend runs ~7x slower)."""
    if other_models not in OTHER_MODELS:
        choices = ", ".join(OTHER_MODELS)
        raise ValueError(f"`hydra.launcher.other_models` must be one of {choices}. Received: {other_models!r}")
    jax_backend = keras.backend.backend() == "jax"
    if other_models == "auto":
        if not jax_backend:
            return "unroll"
        import jax

        return "vmap" if jax.default_backend() != "cpu" else None
    if other_models == "vmap" and not jax_backend:
        raise NotPackable("jax.vmap needs backend=jax (hydra.launcher.other_models=unroll packs on TensorFlow)")
    return None if other_models == "alone" else other_models


@dataclass
class PackPlan:
    """The model and optimizer a pack trains with, built from its members' own models, schedules and optimizers."""

    model: MemberBlocks  # a keras.Model: PackedMLP or VmappedPack
    schedules: list[keras.optimizers.schedules.LearningRateSchedule]  # member k's LR schedule
    seeds: list[int]  # one per data group: the order of examples its members see
    starts: list[int]  # one per data group: the epochs its members trained before this pack (their data's epoch)
    optimizer: PackedOptimizer  # the pack's; `optimizer.of_member(k)` holds member k's state
    path: str  # how it trains: `FUSED`, `VMAPPED` or `UNROLLED`


def stack(
    solo_models: Sequence[keras.Model],
    seeds: Sequence[int],
    schedules: Sequence[keras.optimizers.schedules.LearningRateSchedule],
    optimizers: Sequence[keras.optimizers.Optimizer],
    compile_args: dict[str, Any],
    other_models: str = "auto",
    starts: Sequence[int] | None = None,
    steps_per_epoch: int = 0,
) -> PackPlan:
    """Stacks the members' solo models (ordered by seed, then start), member k starting from exactly solo model k's
    weights.

    Args:
        solo_models: each member's model as its solo run builds it, initial weights included.
        seeds: each member's seed, sorted.
        schedules: each member's LR schedule.
        optimizers: each member's optimizer, its class and settings (its LR is ignored): members may differ.
        compile_args: further `compile` arguments (`steps_per_execution`, `jit_compile`).
        other_models: `hydra.launcher.other_models`, how a model other than the fused MLP packs (`other_models_path`).
        starts: per member, the epochs it trained before this pack, beyond the pack's own count (None: all 0).
            Member k's schedule and optimizer run `starts[k] * steps_per_epoch` steps ahead of the pack, and its
            data `starts[k]` epochs ahead (`PackPlan.starts`).
        steps_per_epoch: the optimizer steps of one epoch.

    Raises:
        NotPackable: when the model or optimizer cannot be packed (the members then train alone).
    """
    for optimizer in optimizers:
        check_optimizer(optimizer)
    starts = list(starts or [0] * len(seeds))
    groups, blocks = seed_groups(seeds, starts), blocks_of(seeds, optimizers, starts)
    step_offsets = [start * steps_per_epoch for start in starts]
    schedules = [shifted(schedule, offset) for schedule, offset in zip(schedules, step_offsets, strict=True)]
    try:
        input_shape, layers = mlp_spec(solo_models[0])
    except NotPackable as not_mlp:
        how = other_models_path(other_models)
        if how is None:
            raise NotPackable(
                f"{not_mlp}; other models train alone with hydra.launcher.other_models={other_models} (on JAX on a "
                "CPU their packs were slower than one at a time; other_models=unroll or vmap packs them anyway)"
            ) from None
        check_model(solo_models[0])
        model = VmappedPack(solo_models, groups, blocks, unroll=how == "unroll")
        path = UNROLLED if model.unroll else VMAPPED
    else:
        model, path = PackedMLP(input_shape, layers, groups, blocks), FUSED
        model.set_member_weights([m.get_weights() for m in solo_models])
    optimizer = model.build_optimizer(optimizers, PackSchedule(schedules), step_offsets)
    model.compile(optimizer=optimizer, loss=PackedLoss(model.group_sizes), **compile_args)
    firsts = model.offsets  # each data group's first member
    return PackPlan(model, schedules, [seeds[k] for k in firsts], [starts[k] for k in firsts], optimizer, path)
