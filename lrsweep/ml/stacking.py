"""A pack built from its members' solo models: the fused MLP where the model is one, else any Keras model mapped
over its members on JAX; anything else trains alone (`NotPackable`, with the reason)."""

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
)
from lrsweep.ml.vmapped import VmappedPack, check_model

FUSED = "fused MLP (one wide matrix product per seed and optimizer)"
VMAPPED = "jax.vmap over the model's stateless_call"


def vmap_pays(vmap: str | bool) -> bool:
    """`vmap` as a yes or no; "auto": whether JAX computes on a GPU or TPU. Measured on this 2-core CPU
    (scripts/bench_packed.py --parts models), a vmapped pack is slower per model-epoch than one run at a time (the
    CNN's convolutions become grouped ones XLA's CPU backend runs ~10x slower; the ViT breaks even)."""
    if vmap != "auto":
        return bool(vmap)
    import jax

    return jax.default_backend() != "cpu"


@dataclass
class PackPlan:
    """The model and optimizer a pack trains with, built from its members' own models, schedules and optimizers."""

    model: MemberBlocks  # a keras.Model: PackedMLP or VmappedPack
    schedules: list[keras.optimizers.schedules.LearningRateSchedule]  # member k's LR schedule
    seeds: list[int]  # one per data group: the order of examples its members see
    optimizer: PackedOptimizer  # the pack's; `optimizer.of_member(k)` holds member k's state
    path: str  # how it trains: `FUSED` or `VMAPPED`


def stack(
    solo_models: Sequence[keras.Model],
    seeds: Sequence[int],
    schedules: Sequence[keras.optimizers.schedules.LearningRateSchedule],
    optimizers: Sequence[keras.optimizers.Optimizer],
    compile_args: dict[str, Any],
    vmap: str | bool = "auto",
) -> PackPlan:
    """Stacks the members' solo models (ordered by seed), member k starting from exactly solo model k's weights.

    Args:
        solo_models: each member's model as its solo run builds it, initial weights included.
        seeds: each member's seed, sorted.
        schedules: each member's LR schedule.
        optimizers: each member's optimizer, its class and settings (its LR is ignored): members may differ.
        compile_args: further `compile` arguments (`steps_per_execution`, `jit_compile`).
        vmap: `hydra.launcher.vmap`, whether a model other than the fused MLP packs: true, false or "auto".

    Raises:
        NotPackable: when the model or optimizer cannot be packed (the members then train alone).
    """
    for optimizer in optimizers:
        check_optimizer(optimizer)
    groups, blocks = seed_groups(seeds), blocks_of(seeds, optimizers)
    try:
        input_shape, layers = mlp_spec(solo_models[0])
    except NotPackable as not_mlp:
        if keras.backend.backend() != "jax":
            raise NotPackable(f"{not_mlp}; other models pack on the JAX backend only (backend=jax)") from None
        if not vmap_pays(vmap):
            raise NotPackable(
                f"{not_mlp}; other models pack by jax.vmap, slower than one at a time on a CPU "
                "(hydra.launcher.vmap=true packs them anyway)"
            ) from None
        check_model(solo_models[0])
        model, path = VmappedPack(solo_models, groups, blocks), VMAPPED
    else:
        model, path = PackedMLP(input_shape, layers, groups, blocks), FUSED
        model.set_member_weights([m.get_weights() for m in solo_models])
    optimizer = model.build_optimizer(optimizers, PackSchedule(schedules))
    model.compile(optimizer=optimizer, loss=PackedLoss(model.group_sizes), **compile_args)
    return PackPlan(model, list(schedules), [seeds[offset] for offset in model.offsets], optimizer, path)
