"""Benchmark: what per-step LR logging (`lr_step`, MlflowStepLogger) costs per epoch, on the full Fashion-MNIST.

    .venv/bin/python scripts/bench_step_lr.py --backend jax
    .venv/bin/python scripts/bench_step_lr.py --backend tensorflow --epochs 3 --repeats 2
    .venv/bin/python scripts/bench_step_lr.py --flush-seconds 0   # a log_batch at every callback call

Trains the project's MLP with a per-step warm-up (Adam, batch 32, steps_per_execution 64, as `train.py` does)
into a throw-away SQLite MLflow store, alternating fits with and without the step logger, and prints the median
epoch time of each (first epoch of every fit left out: it compiles) and the time spent inside the logger itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrsweep.core import backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=backend.BACKENDS)
    parser.add_argument("--every", type=int, default=50, help="tracking.log_every_n_steps (default 50)")
    parser.add_argument(
        "--flush-seconds", type=float, default=10.0, help="MlflowStepLogger's flush_seconds (0: a request per call)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first one is not timed")
    parser.add_argument("--repeats", type=int, default=2, help="fits per condition, alternating")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps-per-execution", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    args = parser.parse_args()

    backend.select(args.backend)
    import keras

    from lrsweep import tracking
    from lrsweep.ml import data, schedules
    from lrsweep.ml import models as model
    from lrsweep.run.callbacks import MlflowEpochLogger, MlflowStepLogger

    class TimedStepLogger(MlflowStepLogger):
        """The logger under test, timing its own work (all its hooks) per epoch."""

        seconds: list[float] = []  # per epoch, all fits
        first_epoch_seconds: list[float] = []  # per fit: includes compiling the schedule on JAX
        requests = 0

        def _timed(self, hook, *args):
            start = time.perf_counter()
            hook(*args)
            self._spent += time.perf_counter() - start

        def on_epoch_begin(self, epoch, logs=None):
            self._spent = 0.0
            self._timed(super().on_epoch_begin, epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self._timed(super().on_train_batch_end, batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._timed(super().on_epoch_end, epoch, logs)
            (TimedStepLogger.first_epoch_seconds if epoch == 0 else TimedStepLogger.seconds).append(self._spent)

        def _flush(self):
            TimedStepLogger.requests += bool(self._pending)
            super()._flush()

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self.cpu_times: list[float] = []  # all threads of the process, MLflow's background writer included

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)

    dataset = data.load(train_size=args.train_size)
    steps_per_epoch = -(-len(dataset.x_train) // args.batch_size)
    store = tempfile.mkdtemp(prefix="bench_step_lr_")
    client, experiment_id = tracking.connect(f"sqlite:///{store}/mlflow.db", "bench")

    def fit(step_logging: bool) -> tuple[list[float], list[float]]:
        schedule = schedules.warmup_then_decay(
            0.01,
            {"shape": "linear", "initial_lr": 0.0, "length": 1, "length_unit": "epoch"},
            schedules.cosine_decay,
            steps_per_epoch=steps_per_epoch,
            total_steps=args.epochs * steps_per_epoch,
        )
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        net = model.build_mlp()
        net.compile(
            optimizer=keras.optimizers.Adam(schedules.KerasSchedule(schedule)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=args.steps_per_execution,
        )
        run_id = client.create_run(experiment_id).info.run_id
        timer = EpochTimer()
        callbacks = [timer, MlflowEpochLogger(client, run_id)]
        if step_logging:
            callbacks.append(TimedStepLogger(client, run_id, args.every, args.flush_seconds))
        net.fit(
            dataset.x_train,
            dataset.y_train,
            batch_size=args.batch_size,
            epochs=args.epochs,
            validation_data=(dataset.x_val, dataset.y_val),
            callbacks=callbacks,
            verbose=0,
        )
        client.set_terminated(run_id)
        return timer.times[1:], timer.cpu_times[1:]

    times: dict[bool, list[float]] = {False: [], True: []}
    cpu_times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for step_logging in (False, True):
            wall, cpu = fit(step_logging)
            times[step_logging] += wall
            cpu_times[step_logging] += cpu

    off, on = statistics.median(times[False]), statistics.median(times[True])
    inside = statistics.median(TimedStepLogger.seconds)
    epochs_logged = len(TimedStepLogger.seconds) + len(TimedStepLogger.first_epoch_seconds)
    print(
        f"backend={args.backend} train={len(dataset.x_train)} batch_size={args.batch_size} "
        f"steps_per_execution={args.steps_per_execution} steps/epoch={steps_per_epoch} "
        f"log_every_n_steps={args.every} ({-(-steps_per_epoch // args.every)} points/epoch) "
        f"flush_seconds={args.flush_seconds:g}"
    )
    print(f"epoch time without lr_step: median {off:.3f} s  ({', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"epoch time with lr_step:    median {on:.3f} s  ({', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"difference of the medians: {on - off:+.3f} s per epoch ({100 * (on - off) / off:+.1f}%)")
    cpu_off, cpu_on = statistics.median(cpu_times[False]), statistics.median(cpu_times[True])
    print(
        f"process CPU per epoch (all threads): median {cpu_off:.3f} s without, {cpu_on:.3f} s with "
        f"({100 * (cpu_on - cpu_off) / cpu_off:+.1f}%)"
    )
    first = ", ".join(f"{1000 * t:.0f}" for t in TimedStepLogger.first_epoch_seconds)
    print(
        f"inside the step logger: median {1000 * inside:.1f} ms per epoch ({100 * inside / off:.2f}% of an epoch "
        f"without it); first epoch of each fit: {first} ms; "
        f"{TimedStepLogger.requests} log_batch requests over {epochs_logged} epochs"
    )


if __name__ == "__main__":
    main()
