"""Chooses the Keras backend and its CPU threads from config before Keras is imported (both are read once)."""

from __future__ import annotations

import logging
import os
import sys

from lrsweep.core.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "jax")


def thread_env(threads: int) -> dict[str, str]:
    """The environment that holds TensorFlow, JAX and OpenMP to `threads` compute threads in one process.

    Each library reads its variable once, when its runtime starts, so these must be set before the first import.
    XLA's old recipe (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`) no longer
    limits jaxlib's CPU client; `PJRT_NPROC` sizes its thread pools.
    """
    count = str(threads)
    return {
        "TF_NUM_INTRAOP_THREADS": count,  # TensorFlow: threads inside one op (its Eigen pool, oneDNN too)
        "TF_NUM_INTEROP_THREADS": count,  # TensorFlow: independent ops run at once
        "PJRT_NPROC": count,  # JAX: the XLA CPU client's compute pools
        "OMP_NUM_THREADS": count,  # OpenMP pools, e.g. NumPy's BLAS while the data is prepared
    }


def check_threads(threads: object) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            "`threads` must be an integer >= 1 (compute threads per job), or null for the backend's default "
            f"(all cores). Received: threads={threads!r}"
        )


def select(backend: str, threads: int | None = None) -> None:
    """Sets KERAS_BACKEND, and the thread limits when `threads` is given, for this process.

    Call it before anything imports Keras. A process keeps one backend and one thread setting: when Keras is
    already imported (the second job in the same process), the values must match what the first job set.

    Args:
        backend: "tensorflow" or "jax".
        threads: compute threads per process (per job), or None to leave the backend's default (all cores)
            and whatever the environment already sets.

    Raises:
        ValueError: for an unknown backend or a bad `threads`, or when Keras was already imported with
            another backend or other thread limits.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"`backend` must be one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
    check_threads(threads)
    wanted = thread_env(threads) if threads is not None else {}
    if "keras" in sys.modules:  # asked of the Keras already imported; importing it here would start one
        current = sys.modules["keras"].backend.backend()
        if current != backend:
            raise ConfigError(
                f"Keras already runs on {current!r} in this process, so backend={backend!r} cannot apply. "
                "Sweep over backends in separate commands, or with a launcher that starts a new process per job "
                "(hydra.launcher.cluster=local or ray); joblib's workers run several jobs each."
            )
        applied = {name: os.environ.get(name) for name in wanted}
        if applied != wanted:
            raise ConfigError(
                f"Keras already started in this process with other thread limits ({applied}), so "
                f"threads={threads} cannot apply. Sweep over `threads` in separate commands."
            )
        return
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no probing for TPUs and GPUs (and its warning) on start-up
    os.environ.update(wanted)
    log.debug("Keras backend %s, %s", backend, f"{threads} thread(s) per job" if threads else "default threads")
