"""The foundation every layer may use: user errors, argument checks, what identifies a job, interrupts, the
Keras backend choice (made before Keras is imported) and seed-aware statistics. Imports neither Keras nor MLflow.
"""

__all__ = ["backend", "checks", "errors", "identity", "interrupts", "stats"]
