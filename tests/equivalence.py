"""Packed vs solo, measured: the same configs trained alone and as one pack, compared number by number.

Imported by tests/run/test_packing.py (JAX, in process), and run as a script for another backend, whose Keras cannot
share a process with JAX's: `KERAS_BACKEND=tensorflow python -m tests.equivalence adam sgd` prints JSON.
"""

from __future__ import annotations

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
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
TEST_KEYS = ("test_loss", "test_accuracy")  # the test set scored once, at the end (validation is held out)


def jobs(optimizer: str, store_uri: str, epochs: int = 2):
    """The three members' prepared jobs, ordered by seed as a pack orders them."""
    from hydra import compose, initialize_config_dir

    from lrsweep.run import experiment
    from tests.conftest import CONF_DIR

    prepared = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for k, member in enumerate(MEMBERS):
            overrides = [*OPTIMIZERS[optimizer][:1], *member, *OPTIMIZERS[optimizer][1:]]
            cfg = compose(
                config_name="config",
                overrides=[*TINY, f"training.epochs={epochs}", "training.verbose=0", f"tracking.uri={store_uri}",
                           f"tracking.run_name=member{k}", *overrides],
            )  # fmt: skip
            context = identity.JobContext(choices={"optimizer": optimizer}, overrides=tuple(overrides))
            prepared.append(experiment.prepare(cfg, context))
    return sorted(prepared, key=lambda job: job.seed)


def histories(client, experiment_id: str, name: str) -> dict[str, list[float]]:
    (run,) = client.search_runs([experiment_id], f"attributes.run_name = '{name}'")
    return {
        key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in (*EPOCH_KEYS, *TEST_KEYS)
    } | {"status": run.info.status, "metrics": sorted(run.data.metrics)}


def one_step(optimizer: str, store_uri: str) -> dict[str, float]:
    """Initial weights and weights after one update, member by member against its solo model.

    Returns:
        The largest absolute difference of initial weights (exactly 0 expected) and after one step, over all
        members and variables.
    """
    import keras

    from lrsweep.ml import training
    from lrsweep.ml.schedules import KerasSchedule
    from lrsweep.run import experiment, pack

    prepared = jobs(optimizer, store_uri)
    dataset = experiment.instantiate(prepared[0].cfg.data)
    plan = pack.build_pack(prepared, dataset)
    model = plan.model
    batch = prepared[0].cfg.training.batch_size
    x, y = training.epoch_data(dataset, plan.seeds, 0)
    initial = [model.member_weights(k) for k in range(model.members)]
    model.train_on_batch(x[:batch], y[:batch])
    initial_diff, step_diff = 0.0, 0.0
    for k, job in enumerate(prepared):
        keras.backend.clear_session()
        solo = experiment.build_model(job.cfg)
        solo.compile(
            optimizer=experiment.build_optimizer(job.cfg, KerasSchedule(experiment.build_schedule(job.cfg, dataset))),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        for a, b in zip(solo.get_weights(), initial[k], strict=True):
            initial_diff = max(initial_diff, float(np.max(np.abs(a - b))))
        xs, ys = training.epoch_data(dataset, job.seed, 0)
        solo.train_on_batch(xs[:batch], ys[:batch])
        for a, b in zip(solo.get_weights(), model.member_weights(k), strict=True):
            step_diff = max(step_diff, float(np.max(np.abs(a - b))))
    return {"initial": initial_diff, "step": step_diff}


def compare(optimizer: str, folder: str) -> dict:
    """Trains the three members alone and as one pack into one store; returns both runs' per-epoch histories."""
    from lrsweep import tracking
    from lrsweep.run import experiment, pack

    store_uri = f"sqlite:///{folder}/{optimizer}.db"
    client, experiment_id = tracking.connect(store_uri, "equivalence")
    prepared = jobs(optimizer, store_uri)
    solo_names, packed_names = [], []
    for job in prepared:
        experiment.train_solo(job, client, experiment_id)
        solo_names.append(job.name)
    for job in prepared:
        job.name = f"{job.name}-packed"
        packed_names.append(job.name)
    outcomes = pack.train_pack(prepared, client, experiment_id, "equivalence")
    return {
        "outcomes": [str(o) for o in outcomes],
        "solo": [histories(client, experiment_id, n) for n in solo_names],
        "packed": [histories(client, experiment_id, n) for n in packed_names],
        "one_step": one_step(optimizer, store_uri),
    }


if __name__ == "__main__":
    backend.select(os.environ.get("KERAS_BACKEND", "tensorflow"))
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps({name: compare(name, folder) for name in sys.argv[1:]}))
