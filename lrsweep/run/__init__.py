"""One job and one pack, trained and recorded: config -> values -> fit -> MLflow runs, and the sweep"s plan.

Its modules import Keras: choose the backend (`lrsweep.core.backend.select`) before importing them.
"""

__all__ = ["callbacks", "experiment", "job", "launching", "pack", "remote", "watching"]
