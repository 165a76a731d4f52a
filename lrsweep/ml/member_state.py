"""A pack member's training state taken out of its pack and put into another: what lets a pack shrink to the
members that go on (successive halving) while each goes on exactly as it would have.

A member's state is its solo model's variables (weights, BatchNorm statistics, random states), its optimizer's slots
(Adam's moments, Adagrad's accumulators, ...) for each of its trainable variables, and the step count its schedule
and its optimizer's bias correction read. The new pack is built from solo models holding the variables
(`restore_variables`, before `lrsweep.ml.stacking.stack`), then its optimizer gets the slots and step count
(`restore_optimizer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from lrsweep.ml import keras_adapter
from lrsweep.ml.packing import MemberBlocks, NotPackable, PackedOptimizer, solo_variables


@dataclass
class MemberState:
    """One member's state between two stretches of training (`capture`)."""

    variables: list[np.ndarray]  # its solo model's, in `solo_variables` order
    slots: dict[str, list[np.ndarray]]  # optimizer slot list -> one array per trainable variable, in their order
    iterations: int  # optimizer steps taken


def member_slot_variables(model: MemberBlocks, optimizer: PackedOptimizer, member: int) -> tuple[dict, list[int]]:
    """The optimizer slot lists that hold member `member`'s state, and the positions in them (and in the model's
    `trainable_variables`: the indices) of the variables of its block, in solo order.

    Raises:
        NotPackable: the optimizer keeps state lrsweep cannot carry from one pack to another.
    """
    inner, indices = optimizer.of_member(member)
    try:
        slots = keras_adapter.state_slots(inner)
    except ValueError as e:
        raise NotPackable(f"{e}, so a member's state cannot move to another pack") from None
    block = model.block_of(member)
    positions = [(position, index) for position, index in enumerate(indices) if model.variable_blocks[index] == block]
    return slots, positions


def capture(model: MemberBlocks, optimizer: PackedOptimizer, members: Sequence[int]) -> list[MemberState]:
    """The states of members `members` in the pack (`model`, trained by `optimizer`), as copies; each slot
    variable is read once for all of them."""
    arrays: dict[int, np.ndarray] = {}  # id(slot variable) -> its value

    def value(variable: keras.Variable) -> np.ndarray:
        if id(variable) not in arrays:
            arrays[id(variable)] = ops.convert_to_numpy(variable)
        return arrays[id(variable)]

    iterations = int(ops.convert_to_numpy(optimizer.iterations))  # the pack's; a member's is its offset more
    states = []
    for member in members:
        slots, positions = member_slot_variables(model, optimizer, member)
        values = {
            name: [np.array(model.member_values(i, value(variables[p]), member)) for p, i in positions]
            for name, variables in slots.items()
        }
        steps = iterations + optimizer.member_offsets[member]
        states.append(MemberState(model.member_variables(member), values, steps))
    return states


def restore_variables(solo_models: Sequence[keras.Model], states: Sequence[MemberState | None]) -> None:
    """Sets each solo model's variables to its member's captured ones (None: left as built)."""
    for model, state in zip(solo_models, states, strict=True):
        if state is None:
            continue
        for variable, value in zip(solo_variables(model), state.variables, strict=True):
            variable.assign(value)


def restore_optimizer(model: MemberBlocks, optimizer: PackedOptimizer, states: Sequence[MemberState | None]) -> None:
    """Puts each member's captured slots and the step count into a pack's built optimizer; members with no state
    (None) keep fresh slots. Each member's steps, less its step offset in the pack (`PackedOptimizer`), must be
    the same: the pack's count.

    Raises:
        ValueError: the members' step counts, less their offsets, differ (they cannot share one optimizer step).
    """
    if all(state is None for state in states):
        return
    taken = [state.iterations if state is not None else 0 for state in states]  # a fresh member: 0 steps
    counts = {steps - offset for steps, offset in zip(taken, optimizer.member_offsets, strict=True)}
    if len(counts) > 1:
        raise ValueError(
            "a pack's members must have taken the same number of steps beyond their offsets. "
            f"Received: {sorted(counts)}"
        )
    updates: dict[int, np.ndarray] = {}  # id(slot variable) -> its new value
    variables: dict[int, keras.Variable] = {}
    for member, state in enumerate(states):
        if state is None:
            continue
        slots, positions = member_slot_variables(model, optimizer, member)
        for name, slot_list in slots.items():
            for (p, index), value in zip(positions, state.slots[name], strict=True):
                slot = slot_list[p]
                array = updates.setdefault(id(slot), np.array(ops.convert_to_numpy(slot)))
                variables[id(slot)] = slot
                model.put_member_values(index, array, member, value)
    for key, array in updates.items():
        variables[key].assign(array)
    (count,) = counts
    optimizer.iterations.assign(count)
    for inner, offset in zip(optimizer.optimizers, optimizer.optimizer_offsets, strict=True):
        inner.iterations.assign(count + offset)


def save(state: MemberState, path: Path, notes: dict) -> None:
    """Writes a member's state and `notes` (JSON-able) to `path` (.npz), whole or not at all (a temporary file
    renamed into place)."""
    arrays = {f"variable_{i}": value for i, value in enumerate(state.variables)}
    for name, values in state.slots.items():
        arrays.update({f"slot_{name}_{i}": value for i, value in enumerate(values)})
    meta = {"variables": len(state.variables), "slots": {k: len(v) for k, v in state.slots.items()}, "notes": notes}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), iterations=np.array(state.iterations), **arrays)
    os.replace(partial, path)


def load(path: Path) -> tuple[MemberState, dict]:
    """A member's state and the notes `save` wrote with it."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        variables = [data[f"variable_{i}"] for i in range(meta["variables"])]
        slots = {name: [data[f"slot_{name}_{i}"] for i in range(n)] for name, n in meta["slots"].items()}
        return MemberState(variables, slots, int(data["iterations"])), meta["notes"]
