"""Benchmark: packed sweeps against one job at a time, and against the tutorial's own script, in one session.

    .venv/bin/python scripts/bench_packed.py                         # everything below (about 30 minutes)
    .venv/bin/python scripts/bench_packed.py --parts steady          # only the speed inside one pack
    .venv/bin/python scripts/bench_packed.py --parts grid --backends jax

Parts (each a real `python train.py [-m] ...` into a fresh temporary folder and SQLite store, as a user runs it):
- grid: the 3x3 warm-up grid (schedule=linear, initial_lr 0.001/0.003/0.005 x final_lr 0.005/0.01/0.02), Adam,
  5 epochs, full data: 45 model-epochs, one at a time (hydra/launcher=basic) and packed, on each backend;
- tutorial: the README's main command, `+experiment=tutorial training.seed=0,1,2` on TensorFlow: 12 runs x 5
  epochs = 60 model-epochs; and the tutorial's script as written (../shared/bench/seed_tutorial.py, TensorFlow)
  run 3 times, for the same 60 model-epochs;
- single: one `python train.py training.epochs=1`, its wall time beside the time inside its run (start-up apart);
- models: seconds per model-epoch after compilation for each model option (mlp, cnn, vit), one run alone against
  packs of 4 and 8 (the MLP fused, the others by jax.vmap on JAX: `hydra.launcher.other_models=vmap`; unrolled
  on TensorFlow), on each backend (TensorFlow with and without XLA), on 3,200 training examples scaled to the full
  50,000; beside them one model at batch 256 (a pack of 8's work per step, on one set of weights: what the CPU's
  convolutions and products reach at that size, a ceiling for packing); with the GFLOP/s each achieves (XLA's FLOP
  count of a training example) against the backend's measured 2048x2048 GEMM rate;
- steady: seconds per model-epoch inside one pack of 1, 9 and 32 Adam members after compilation (2 epochs timed
  after a first), with where an epoch's time goes (training steps, validation, data order), in a fresh process
  per backend.
Prints figures; asserts nothing. Timings on a shared 2-core machine vary by about 20%: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_SCRIPT = ROOT.parent / "shared" / "bench" / "seed_tutorial.py"
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")
GRID = ["schedule=linear", "schedule.initial_lr=0.001,0.003,0.005", "schedule.final_lr=0.005,0.01,0.02"]
TUTORIAL = ["+experiment=tutorial", "training.seed=0,1,2"]
LAUNCHERS = {"one at a time": ["hydra/launcher=basic"], "packed": []}
MODELS = ("mlp", "cnn", "vit")  # the model options --parts models measures


def child(*args: str) -> dict:
    """This script run again with `args` in a fresh process (one backend per process: Keras keeps the first it
    imports); the JSON its last line prints."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(result.stderr[-4000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def train(backend: str, overrides: list[str], multirun: bool = True) -> tuple[float, int, float]:
    """`python train.py [-m] ...` in a fresh folder: its wall time, the runs it logged, and the seconds spent
    inside them (from a run's start to its end, overlapping runs of a pack counted once): training, validation,
    test scores and MLflow logging. The rest of the wall time is start-up, composition, checks and planning."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{folder}/mlruns/mlflow.db"
        command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), f"tracking.uri={store}",
                   f"backend={backend}", f"hydra.sweep.dir={folder}/sweep", f"hydra.run.dir={folder}/run",
                   "training.verbose=0", *overrides]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"train.py exited {result.returncode}:\n{result.stderr[-4000:]}")
        client = MlflowClient(store)
        experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
        runs = client.search_runs([experiment_id], "tags.`lrsweep.role` = 'job' and attributes.status = 'FINISHED'")
        return wall, len(runs), covered([(r.info.start_time, r.info.end_time) for r in runs]) / 1000


def covered(spans: list[tuple[int, int]]) -> float:
    """The length of the union of [start, end] spans."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def tutorial_script(times: int = 3) -> float:
    """Wall time of the tutorial's own script run `times` times (TensorFlow, Keras reading ~/.keras/datasets)."""
    with tempfile.TemporaryDirectory() as home:
        cache = Path(home) / ".keras" / "datasets" / "fashion-mnist"
        cache.mkdir(parents=True)
        for file in DEBIAN_DATA.glob("*.gz"):
            (cache / file.name).symlink_to(file)
        env = {**os.environ, "HOME": home, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
        start = time.perf_counter()
        for _ in range(times):
            result = subprocess.run([sys.executable, str(TUTORIAL_SCRIPT)], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{TUTORIAL_SCRIPT} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return time.perf_counter() - start


def _clock():
    import keras

    class Clock(keras.callbacks.Callback):
        """Each epoch's seconds, from its first step to the end of its validation."""

        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    return Clock


def steady(members: list[int], epochs: int = 3) -> dict:
    """In this process: seconds per model-epoch inside packs of each size, after the first (compiling) epoch."""
    import keras
    import numpy as np
    from hydra import compose, initialize_config_dir

    from lrsweep.core import identity
    from lrsweep.ml import training
    from lrsweep.run import experiment, pack

    Clock = _clock()
    results = {}
    for size in members:
        lrs = np.geomspace(0.001, 0.02, size)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            jobs = [
                experiment.prepare(
                    compose(config_name="config", overrides=[f"optimizer.learning_rate={lr:.6g}"]),
                    identity.JobContext(),
                )
                for lr in lrs
            ]
        dataset = experiment.instantiate(jobs[0].cfg.data)
        if size == 1:
            keras.backend.clear_session()
            model = experiment.build_model(jobs[0].cfg)
            model.compile(optimizer=experiment.build_optimizer(jobs[0].cfg, 0.01), metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          **experiment.compile_args(jobs[0].cfg))  # fmt: skip
            seeds = 0
        else:
            model = pack.build_pack(jobs, dataset).model
            seeds = [0]
        clock = Clock()
        start = time.perf_counter()
        training.fit_epochs(model, dataset, seeds, 32, epochs, [clock])
        times = clock.times
        total = time.perf_counter() - start
        # Where a steady epoch goes: its data order, and validation on its own.
        t = time.perf_counter()
        training.epoch_data(dataset, seeds, 99)
        order = time.perf_counter() - t
        t = time.perf_counter()
        model.evaluate(dataset.x_val, dataset.y_val, batch_size=32, verbose=0)
        validation = time.perf_counter() - t
        epoch = float(np.median(times[1:]))
        results[size] = {
            "first_epoch_s": times[0],
            "steady_epoch_s": epoch,
            "per_model_epoch_s": epoch / size,
            "validation_s": validation,
            "data_order_s": order,
            "fit_overhead_s": (total - sum(times)) / epochs,
        }
    return results


def gemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This backend's float32 matrix-multiply rate on one compiled size x size product (best of `repeats`)."""
    import keras
    import numpy as np

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    if keras.backend.backend() == "jax":
        import jax

        product = jax.jit(lambda x: x @ x)
        wait = jax.block_until_ready
    else:
        import tensorflow as tf

        product = tf.function(lambda x: x @ x, jit_compile=True)

        def wait(value):
            return value.numpy()

    wait(product(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        wait(product(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def train_flops_per_example(model, x, y) -> float:
    """FLOPs of one training example's forward and backward pass, as XLA counts them (JAX's cost analysis)."""
    import jax
    import keras

    def loss(trainable, non_trainable, x, y):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    compiled = jax.jit(jax.grad(loss)).lower(trainable, non_trainable, x[:32], y[:32]).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"] / 32


def models_steady(names: list[str], examples: int = 3200) -> dict:
    """In this process: per model option and XLA setting (both on TensorFlow; on JAX only XLA, as Keras always
    compiles there), seconds per full-data model-epoch alone and in packs of 4 and 8 (the MLP fused, the others
    vmapped on JAX, unrolled on TensorFlow); one model at batch 256, the work of a pack of 8 at batch 32 in the
    form a CPU runs fastest (one set of weights), as a ceiling for what packing 8 can give; the FLOPs of one
    training example (JAX only) and the backend's GEMM rate."""
    import keras
    from hydra import compose, initialize_config_dir

    from lrsweep.core import identity
    from lrsweep.ml import stacking
    from lrsweep.run import experiment

    def epoch_seconds(model, x, y, batch: int = 32) -> float:
        model.fit(x[:640], y[:640], batch_size=batch, epochs=1, verbose=0)  # compiles
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        return (time.perf_counter() - start) * 50000 / len(x)

    jax_backend = keras.backend.backend() == "jax"
    results = {"gemm_gflops": gemm_gflops()}
    for name in names:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            job = experiment.prepare(compose(config_name="config", overrides=[f"model={name}"]), identity.JobContext())
        dataset = experiment.instantiate(job.cfg.data)
        x, y = dataset.x_train[:examples], dataset.y_train[:examples]
        for jit in (True,) if jax_backend else (True, False):
            row = results[f"{name} {'XLA' if jit else 'no XLA'}"] = {}
            for label, batch in (("alone", 32), ("one at batch 256", 256)):
                model = experiment.build_model(job.cfg)
                model.compile(optimizer=experiment.build_optimizer(job.cfg, 0.001), jit_compile=jit,
                              steps_per_execution=max(1, 2048 // batch),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
                row[label] = epoch_seconds(model, x, y, batch)
            if jax_backend:
                results[name] = {"flops": train_flops_per_example(model, x, y)}
            for size in (4, 8):
                plan = stacking.stack(
                    [experiment.build_model(job.cfg) for _ in range(size)], [0] * size,
                    [keras.optimizers.schedules.ExponentialDecay(0.001, 100, 1.0)] * size,
                    [experiment.build_optimizer(job.cfg, 0.001) for _ in range(size)],
                    {"steps_per_execution": 64, "jit_compile": jit},
                    "vmap" if jax_backend else "unroll",
                )  # fmt: skip
                row[f"pack of {size}"] = epoch_seconds(plan.model, x[:, None], y[:, None]) / size
                row["path"] = plan.path
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["steady", "models", "single", "grid", "tutorial"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--backends", nargs="+", choices=["tensorflow", "jax"], default=["jax", "tensorflow"])
    parser.add_argument("--members", nargs="+", type=int, default=[1, 9, 32])
    parser.add_argument("--steady-child", help=argparse.SUPPRESS)
    parser.add_argument("--models-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steady_child:  # one backend per process: Keras keeps the first it imports
        from lrsweep.core import backend

        backend.select(args.steady_child)
        print(json.dumps(steady(args.members)))
        return
    if args.models_child:
        from lrsweep.core import backend

        backend.select(args.models_child)
        print(json.dumps(models_steady(list(MODELS))))
        return

    if "steady" in args.parts:
        print("Inside one pack, after compilation (Adam, batch 32, full data; s = seconds):")
        print(f"{'backend':<11} {'members':>7} {'first epoch':>11} {'epoch':>7} {'per model-epoch':>15} "
              f"{'validation':>10} {'data order':>10}")  # fmt: skip
        for backend in args.backends:
            for size, r in child("--steady-child", backend, "--members", *map(str, args.members)).items():
                print(f"{backend:<11} {size:>7} {r['first_epoch_s']:>10.1f}s {r['steady_epoch_s']:>6.2f}s "
                      f"{r['per_model_epoch_s']:>14.3f}s {r['validation_s']:>9.2f}s {r['data_order_s']:>9.2f}s",
                      flush=True)  # fmt: skip

    if "models" in args.parts:
        print("\nEach model option alone and packed, after compilation: seconds per full-data model-epoch (50,000")
        print("examples, batch 32, Adam; timed on 3,200), and the GFLOP/s that achieves (XLA's FLOP count of a")
        print("training example x 50,000 / seconds) against the backend's own 2048x2048 float32 GEMM rate; '1 at 256':")
        print("one model at batch 256, the work of a pack of 8 per step on one set of weights (a ceiling for packing):")
        rows = {backend: child("--models-child", backend) for backend in args.backends}
        flops = {name: r[name]["flops"] for r in rows.values() for name in MODELS if name in r}
        print(f"{'backend':<11} {'GEMM':>10} {'model':<6} {'XLA':<6} {'MFLOP/ex':>8} {'alone':>7} {'pack of 4':>10} "
              f"{'pack of 8':>10} {'1 at 256':>9} {'GFLOP/s alone / 8 / 256':>24}  path")  # fmt: skip
        for backend, r in rows.items():
            for key, m in r.items():
                if not isinstance(m, dict) or "alone" not in m:
                    continue
                name, xla = key.split(" ", 1)
                per = flops.get(name)
                rates = " / ".join(f"{per * 50000 / m[k] / 1e9:.0f}" if per else "-"
                                   for k in ("alone", "pack of 8", "one at batch 256"))  # fmt: skip
                print(f"{backend:<11} {r['gemm_gflops']:>5.0f} GF/s {name:<6} {xla:<6} {(per or 0) / 1e6:>8.1f} "
                      f"{m['alone']:>6.1f}s {m['pack of 4']:>9.1f}s {m['pack of 8']:>9.1f}s "
                      f"{m['one at batch 256']:>8.1f}s {rates:>24}  {m['path']}", flush=True)  # fmt: skip

    if "single" in args.parts:
        print("\nOne run, `python train.py training.epochs=1` (full data), start-up split out:")
        print(f"{'backend':<11} {'wall':>8} {'in its run':>10} {'start-up and the rest':>22}")
        for backend in args.backends:
            wall, _, inside = train(backend, ["training.epochs=1"], multirun=False)
            print(f"{backend:<11} {wall:>7.1f}s {inside:>9.1f}s {wall - inside:>21.1f}s", flush=True)

    sweeps = {"grid": ("3x3 warm-up grid", GRID, 45), "tutorial": ("tutorial x 3 seeds", TUTORIAL, 60)}
    for part in ("grid", "tutorial"):
        if part not in args.parts:
            continue
        title, overrides, model_epochs = sweeps[part]
        print(
            f"\n{title} ({model_epochs} model-epochs), end to end from a fresh store; 'in runs': from the runs'"
            " starts to their ends (training, validation, test scores, logging), the rest is start-up and planning:"
        )
        print(f"{'backend':<11} {'launcher':<14} {'runs':>4} {'wall':>8} {'per model-epoch':>15} {'speed-up':>8} "
              f"{'in runs':>8} {'per model-epoch':>15}")  # fmt: skip
        # The README's main command is the tutorial sweep on TensorFlow, the default backend.
        for backend in ["tensorflow"] if part == "tutorial" else args.backends:
            walls = {}
            for launcher, extra in LAUNCHERS.items():
                wall, runs, inside = train(backend, overrides + extra)
                walls[launcher] = wall
                speedup = walls["one at a time"] / wall if launcher == "packed" else 1.0
                print(f"{backend:<11} {launcher:<14} {runs:>4} {wall:>7.1f}s {wall / model_epochs:>14.2f}s "
                      f"{speedup:>7.1f}x {inside:>7.1f}s {inside / model_epochs:>14.2f}s", flush=True)  # fmt: skip
        if part == "tutorial":
            wall = tutorial_script()
            print(f"{'tensorflow':<11} {'tutorial x3':<14} {12:>4} {wall:>7.1f}s {wall / model_epochs:>14.2f}s  "
                  "(the tutorial's script, run 3 times)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
