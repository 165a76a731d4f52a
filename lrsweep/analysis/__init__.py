"""What a sweep found, read back from MLflow: the ranked report, its figures and files. Never imports Keras.

    report      the data model: runs grouped into configurations, ranked and compared (no files, no figures)
    figures     the report's figures (matplotlib); imports report
    files       the report as files (CSV, Markdown, PNGs, report.html); imports report and figures
    range_test  the LR range test read back: its suggestion, its files
    cli         `python -m lrsweep.report` and `python -m lrsweep.range_test`; imports the others

Nothing imports back up this list (the `analysis` contract in pyproject.toml).
"""

__all__ = ["cli", "figures", "files", "range_test", "report"]
