"""`python -m lrsweep.report --sweep <id>`: a past sweep's report, rebuilt from MLflow (`lrsweep.analysis.cli`)."""

from lrsweep.analysis.cli import report_main as main

if __name__ == "__main__":
    main()
