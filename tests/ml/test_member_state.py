"""A pack member's state moved into another pack (successive halving's shrinking packs): the member goes on there
as it would have in its first pack, for each kind of pack and each optimizer's slots."""

from __future__ import annotations

import numpy as np
import pytest

from lrsweep.ml import member_state
from lrsweep.ml.training import fit_epochs
from lrsweep.run import pack
from tests import equivalence

# Measured (JAX, each case below): a moved member's variables and optimizer slots after its second epoch equal the
# same member's in its first pack exactly when the test runs alone (largest difference 0.0); in the full suite, its
# process having run other tests first, vit_post differed by 5.7e-6 (float32 rounding of a step XLA compiled
# otherwise). A state that did not move differs by far more (the last assertion).
TOLERANCE = 1e-5


def fit(plan, dataset, start: int, end: int, batch_size: int) -> None:
    fit_epochs(plan.model, dataset, plan.seeds, batch_size, end, [], initial_epoch=start)


def largest_gap(a: member_state.MemberState, b: member_state.MemberState) -> float:
    arrays = [*zip(a.variables, b.variables, strict=True)]
    arrays += [pair for name in a.slots for pair in zip(a.slots[name], b.slots[name], strict=True)]
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in arrays)


# mixed: the fused MLP, Adam, SGD with momentum and Adadelta side by side; functional: a user's CNN with BatchNorm
# (its moving statistics) and the mixed optimizers, mapped over members; vit_post: dropout (each member's random
# state is one of its variables).
@pytest.mark.parametrize("case", ["mixed", "functional", "vit_post"])
def test_members_moved_to_a_smaller_pack_go_on_as_in_their_first_pack(case, tmp_path):
    jobs = equivalence.jobs(case, f"sqlite:///{tmp_path}/unused.db")  # ordered by seed: 0, 0, 1
    dataset, batch_size = jobs[0].data(), int(jobs[0].cfg.training.batch_size)
    first = pack.build_pack(jobs, dataset, equivalence.other_models())
    fit(first, dataset, 0, 1, batch_size)
    states = member_state.capture(first.model, first.optimizer, range(3))
    assert {s.iterations for s in states} == {len(dataset.x_train) // batch_size}
    fit(first, dataset, 1, 2, batch_size)
    stayed = member_state.capture(first.model, first.optimizer, range(3))

    moved = [0, 2]  # one of the two seed-0 members (the other stops) and the seed-1 member: new blocks and groups
    second = pack.build_pack([jobs[k] for k in moved], dataset, equivalence.other_models(), [states[k] for k in moved])
    fit(second, dataset, 1, 2, batch_size)
    went = member_state.capture(second.model, second.optimizer, range(len(moved)))
    for i, k in enumerate(moved):
        went_on = went[i]
        assert went_on.iterations == stayed[k].iterations
        assert set(went_on.slots) == set(stayed[k].slots) and went_on.slots  # every slot list, not none
        gap = largest_gap(went_on, stayed[k])
        assert gap <= TOLERANCE, (case, k, gap)
    # ...and not as a member that started afresh would: the state did move.
    assert largest_gap(states[0], stayed[0]) > 100 * TOLERANCE


def test_a_pack_refuses_members_not_whole_epochs_apart(tmp_path):
    jobs = equivalence.jobs("adam", f"sqlite:///{tmp_path}/unused.db")[:2]
    dataset = jobs[0].data()
    plan = pack.build_pack(jobs, dataset)
    states = member_state.capture(plan.model, plan.optimizer, range(2))
    states[1].iterations = 5  # an epoch is 8 steps
    with pytest.raises(ValueError, match=r"whole epochs of \d+ steps apart. Received: \[0, 5\]"):
        pack.build_pack(jobs, dataset, "auto", states)


# A search refills a freed place in a pack with a new run (`lrsweep.run.refill`): members of one pack at different
# epochs. Each must train as it would alone: its schedule at its own step, Adam's bias correction at its own count,
# its seed's order of examples for its own epoch. Jobs (by seed): 0 Adam (constant LR), 1 Adadelta (per-step cosine
# warm-up), both seed 0; 2 SGD with momentum, seed 1. One of the seed-0 members goes on from epoch 1 beside two new
# ones: same seed, different epochs, so different data groups and optimizers.
@pytest.mark.parametrize("case", ["mixed", "functional"])
@pytest.mark.parametrize("ahead", [0, 1])
def test_a_member_ahead_of_new_members_trains_as_it_would_have(case, ahead, tmp_path):
    jobs = equivalence.jobs(case, f"sqlite:///{tmp_path}/unused.db")
    dataset, batch_size = jobs[0].data(), int(jobs[0].cfg.training.batch_size)
    first = pack.build_pack(jobs, dataset, equivalence.other_models())
    fit(first, dataset, 0, 1, batch_size)
    after_one = member_state.capture(first.model, first.optimizer, range(3))
    fit(first, dataset, 1, 2, batch_size)
    after_two = member_state.capture(first.model, first.optimizer, range(3))

    fresh = 1 - ahead
    order = [fresh, ahead, 2]  # by seed, then by epochs trained
    states = [None, after_one[ahead], None]
    mixed = pack.build_pack([jobs[k] for k in order], dataset, equivalence.other_models(), states)
    assert mixed.seeds == [0, 0, 1] and mixed.starts == [0, 1, 0]  # three data groups
    assert sorted(mixed.optimizer.optimizer_offsets) == [0, 0, len(dataset.x_train) // batch_size]
    fit_epochs(mixed.model, dataset, mixed.seeds, batch_size, 1, [], starts=mixed.starts)
    went = member_state.capture(mixed.model, mixed.optimizer, range(3))
    expected = [after_one[fresh], after_two[ahead], after_one[2]]
    for i, k in enumerate(order):
        assert went[i].iterations == expected[i].iterations
        gap = largest_gap(went[i], expected[i])
        assert gap <= TOLERANCE, (case, k, gap)
    # ...and the member ahead did train on from its state, not afresh.
    assert largest_gap(after_one[ahead], after_two[ahead]) > 100 * TOLERANCE
