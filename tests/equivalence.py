"""Packed vs solo, measured: the same configs trained alone and as one pack, compared number by number.

Imported by tests/run/test_packing.py (JAX, in process), and run as a script for another backend, whose Keras cannot
share a process with JAX's: `KERAS_BACKEND=tensorflow python -m tests.equivalence adam sgd` prints JSON
(tests/run/test_packing_tensorflow.py). `check` asserts a comparison within the measured tolerances.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

from lrsweep.core import backend, identity

# As conftest.TINY.
TINY = ["data.train_size=512", "data.test_size=256", "data.validation_size=64", "training.batch_size=64"]
# One pack of three: different LRs, seeds and schedules (constant, the tutorial's per-epoch linear warm-up, a
# per-step cosine warm-up), so one pack checks every way a member's LR can differ from the others'.
MEMBERS = [
    ("schedule=constant", "optimizer.learning_rate=0.01", "training.seed=0"),
    ("schedule=linear", "optimizer.learning_rate=0.02", "schedule.initial_lr=0.002", "training.seed=1"),
    ("schedule=warmup", "optimizer.learning_rate=0.005", "schedule.warmup.shape=cosine",
     "schedule.warmup.length=0.5", "training.seed=0"),
]  # fmt: skip
OPTIMIZERS = {
    "adam": ["optimizer=adam"],
    "adagrad": ["optimizer=adagrad"],
    "adadelta": ["optimizer=adadelta", "optimizer.learning_rate=1.0"],
    "sgd": ["optimizer=sgd", "optimizer.momentum=0.9"],
    "rmsprop": ["optimizer=rmsprop"],
}
# Member k's optimizer in the pack of three optimizers (as the tutorial's sweep packs Adam, Adagrad and Adadelta
# runs). Members 0 and 2 share a seed, so Adam's and Adadelta's entries sit side by side in one wide matrix, and
# SGD's momentum checks that no other optimizer's update moves a member's entries.
MIXED = [["optimizer=adam"], ["optimizer=sgd", "optimizer.momentum=0.9"],
         ["optimizer=adadelta", "optimizer.learning_rate=1.0"]]  # fmt: skip
# Models other than the fused MLP, packed by mapping them over their members (`lrsweep.ml.vmapped`: jax.vmap on JAX,
# unrolled on TensorFlow, where each member's computation is its solo run's: identical training losses, val_loss
# within 1e-7): each model option, and a model a user writes (functional, convolution and BatchNorm:
# tests/user_models.py) with the mixed optimizers. ViT's dropout: member k draws its solo run's masks (its random
# state is one of its variables).
# The CNN with SGD: with Adam, BatchNorm cancels each convolution bias's gradient to rounding noise, which Adam's
# update lr * g / (|g| + eps) turns into steps of either sign: packed and solo val_loss then differed by 1.05e-4
# (relative) after 2 epochs, test_accuracy by 2 of 256 examples. Adam with BatchNorm is checked by "functional".
MODELS = {
    "functional": ["model._target_=tests.user_models.small_cnn", "model.hidden_units=4"],
    "cnn": ["model=cnn", "model.channels=8"],
    "vit_post": ["model=vit", "model.depth=1", "model.width=16", "model.heads=2", "model.dropout=0.1"],
    "vit_pre": ["model=vit", "model.depth=1", "model.width=16", "model.heads=2", "model.norm=pre"],
}
# "optimizers": one pack of 15, MEMBERS under each optimizer of OPTIMIZERS (its three members share one optimizer,
# as in a sweep of one optimizer), all five side by side (as the tutorial's sweep packs Adam, Adagrad and Adadelta):
# members of one seed and five optimizers in one wide matrix, and SGD's momentum checks that no other optimizer's
# update moves a member's entries. "mixed" (MIXED, three members) is not a case here: tests/ml/test_member_state.py.
CASES = ["optimizers", *MODELS]
# "optimizers_small" (not in CASES: TensorFlow's, where a solo run's compilation takes ~2 s): a pack of seven,
# MEMBERS under Adam and one member under each other optimizer (which one: SMALL), seeds 0 and 1 under both, SGD's
# momentum among the seed-0 members. On JAX every optimizer is checked with all three MEMBERS ("optimizers").
SMALL = [("adam", 0), ("adam", 1), ("adam", 2), ("adagrad", 1), ("adadelta", 0), ("sgd", 2), ("rmsprop", 1)]
MEMBER_COUNT = {"optimizers": len(OPTIMIZERS) * len(MEMBERS), "optimizers_small": len(SMALL)}
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
TEST_KEYS = ("test_loss", "test_accuracy")  # the test set scored once, at the end (validation is held out)


# Measured (JAX and TensorFlow): packed and solo per-epoch loss and val_loss differ by at most 1.3e-6 (relative)
# after 2 epochs. Weights after one update differ by at most 1.5e-8 for SGD, Adagrad and Adadelta: one or two
# float32 ulps of weights ~0.1, from gradients summed in another order by the wider matrix product. Adam's
# (1.0e-6) and RMSprop's (1.2e-7) first update, lr * g / (|g| + eps), magnifies that rounding where |g| ~ eps.
HISTORY_RTOL = 1e-5
# test_loss is one evaluation after training, where those differences have compounded: RMSprop on TensorFlow gave
# 0.9743179 packed against 0.97430795 solo (1.02e-5 relative) in two runs on a loaded machine.
TEST_LOSS_RTOL = 3e-5
STEP_ATOL = {"adam": 4e-6, "rmsprop": 5e-7} | dict.fromkeys(MODELS, 4e-6)  # by member's optimizer; Adam in each model
STEP_ATOL_DEFAULT = 6e-8


def check(result: dict, optimizer: str) -> None:
    """Asserts that a pack gave each member its solo run's numbers (`compare`), within the measured tolerances."""
    assert result["outcomes"] == [str(h["val_accuracy"][-1]) for h in result["solo"]]
    for solo, packed in zip(result["solo"], result["packed"], strict=True):
        assert packed["status"] == solo["status"] == "FINISHED"
        assert packed["metrics"] == solo["metrics"]  # same metric keys, effective_lr/* included
        assert packed["lr"] == solo["lr"]  # the same float32 values, exactly
        assert len(solo["test_loss"]) == len(solo["test_accuracy"]) == 1  # scored once: validation is held out
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(packed[key], solo[key], rtol=HISTORY_RTOL, err_msg=key)
        np.testing.assert_allclose(packed["test_loss"], solo["test_loss"], rtol=TEST_LOSS_RTOL, err_msg="test_loss")
        # Counts of correct answers: equal, or one example apart.
        for key in ("accuracy", "val_accuracy", "test_accuracy"):
            np.testing.assert_allclose(packed[key], solo[key], atol=1 / 256 + 1e-9, err_msg=key)
    assert result["one_step"]["initial"] == 0.0  # member k starts from its solo run's exact weights
    steps = result["one_step"]["step"]
    assert len(steps) == len(result["solo"]) == members(optimizer)
    for k, (name, step) in enumerate(steps):  # a model's bound is its case's (Adam in each), else the member's own
        assert step <= STEP_ATOL.get(optimizer if optimizer in MODELS else name, STEP_ATOL_DEFAULT), (k, name, step)


def members(case: str) -> int:
    """How many members the case's pack has."""
    return MEMBER_COUNT.get(case, len(MEMBERS))


def other_models() -> str:
    """How MODELS pack here: by jax.vmap on JAX (on a CPU too, where it is off by default), unrolled on TensorFlow."""
    import keras

    return "vmap" if keras.backend.backend() == "jax" else "unroll"


def member_overrides(optimizer: str, k: int) -> list[str]:
    """Member k's overrides in the case `optimizer` (one of `CASES`)."""
    if optimizer in MODELS:
        choice = {"functional": MIXED[k], "cnn": OPTIMIZERS["sgd"]}.get(optimizer, OPTIMIZERS["adam"])
        return [*choice[:1], *MEMBERS[k], *choice[1:], *MODELS[optimizer]]
    if optimizer == "optimizers":  # MEMBERS under the first optimizer, then under the next, ...
        choice, member = list(OPTIMIZERS.values())[k // len(MEMBERS)], MEMBERS[k % len(MEMBERS)]
    elif optimizer == "optimizers_small":
        choice, member = OPTIMIZERS[SMALL[k][0]], MEMBERS[SMALL[k][1]]
    else:
        choice, member = (MIXED[k] if optimizer == "mixed" else OPTIMIZERS[optimizer]), MEMBERS[k]
    return [*choice[:1], *member, *choice[1:]]


def jobs(optimizer: str, store_uri: str, epochs: int = 2):
    """The case's members' prepared jobs (`members`), ordered by seed as a pack orders them."""
    from hydra import compose, initialize_config_dir

    from lrsweep.run import experiment
    from lrsweep.run.job import Checks
    from tests.conftest import CONF_DIR

    prepared, checks = [], Checks()  # each distinct model, optimizer, ... checked once, as a sweep does
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for k in range(members(optimizer)):
            overrides = member_overrides(optimizer, k)
            cfg = compose(
                config_name="config",
                overrides=[*TINY, f"training.epochs={epochs}", "training.verbose=0", f"tracking.uri={store_uri}",
                           f"tracking.run_name=member{k}", *overrides],
            )  # fmt: skip
            context = identity.JobContext(choices={"optimizer": overrides[0].split("=")[1]}, overrides=tuple(overrides))
            prepared.append(experiment.prepare(cfg, context, checks))
    return sorted(prepared, key=lambda job: job.seed)


def histories(client, experiment_id: str, name: str) -> dict[str, list[float]]:
    (run,) = client.search_runs([experiment_id], f"attributes.run_name = '{name}'")
    return {
        key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in (*EPOCH_KEYS, *TEST_KEYS)
    } | {"status": run.info.status, "metrics": sorted(run.data.metrics)}


def one_step(optimizer: str, prepared: list, how: str | None = None) -> dict[str, float]:
    """Initial weights and weights after one update, member by member against its solo model (`prepared`: `jobs`).

    Returns:
        The largest absolute difference of initial weights (exactly 0 expected), over all members and variables, and
        member by member (in the pack's order) after one step, as (the member's optimizer, difference).
    """
    import keras

    from lrsweep.ml import training
    from lrsweep.ml.schedules import KerasSchedule
    from lrsweep.run import experiment, pack

    dataset = experiment.instantiate(prepared[0].cfg.data)
    plan = pack.build_pack(prepared, dataset, how or other_models())
    model = plan.model
    batch = prepared[0].cfg.training.batch_size
    x, y = training.epoch_data(dataset, plan.seeds, 0)
    initial = [model.member_weights(k) for k in range(model.members)]
    model.train_on_batch(x[:batch], y[:batch])
    initial_diff, step_diffs = 0.0, []
    for k, job in enumerate(prepared):
        training.fresh_session()
        solo = experiment.build_model(job.cfg)
        solo.compile(
            optimizer=experiment.build_optimizer(job.cfg, KerasSchedule(experiment.build_schedule(job.cfg, dataset))),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            # compiled as its solo run is (XLA on TensorFlow too): a convolution bias before BatchNorm has a gradient
            # of rounding noise, which Adam turns into a step of +-lr whose sign differs between XLA and TF's kernels
            jit_compile=job.cfg.training.jit_compile,
        )
        for a, b in zip(solo.get_weights(), initial[k], strict=True):
            initial_diff = max(initial_diff, float(np.max(np.abs(a - b))))
        xs, ys = training.epoch_data(dataset, job.seed, 0)
        solo.train_on_batch(xs[:batch], ys[:batch])
        pairs = zip(solo.get_weights(), model.member_weights(k), strict=True)
        step_diffs.append((job.context.choices["optimizer"], max(float(np.max(np.abs(a - b))) for a, b in pairs)))
    return {"initial": initial_diff, "step": step_diffs}


def compare(optimizer: str, folder: str, how: str | None = None) -> dict:
    """Trains the three members alone and as one pack into one store; returns both runs' per-epoch histories.

    `how`: `hydra.launcher.other_models` for a model other than the MLP (default: `other_models()`)."""
    from lrsweep import tracking
    from lrsweep.run import experiment, pack

    store_uri = f"sqlite:///{folder}/{optimizer}.db"
    client, experiment_id = tracking.connect(store_uri, "equivalence")
    prepared = jobs(optimizer, store_uri)
    solo_names = []
    for job in prepared:
        experiment.train_solo(job, client, experiment_id)
        solo_names.append(job.name)
    packed = [dataclasses.replace(job, name=f"{job.name}-packed") for job in prepared]
    packed_names = [job.name for job in packed]
    outcomes = pack.train_pack(packed, client, experiment_id, "equivalence", how or other_models())
    return {
        "outcomes": [str(o) for o in outcomes],
        "solo": [histories(client, experiment_id, n) for n in solo_names],
        "packed": [histories(client, experiment_id, n) for n in packed_names],
        "one_step": one_step(optimizer, prepared, how),
    }


if __name__ == "__main__":
    backend.select(os.environ.get("KERAS_BACKEND", "tensorflow"))
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps({name: compare(name, folder) for name in sys.argv[1:]}))
