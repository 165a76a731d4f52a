"""What a sweep found, read back from MLflow: the ranked report, its figures and files. Never imports Keras."""

__all__ = ["figures", "report"]
