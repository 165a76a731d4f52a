"""`python -m lrsweep.report --sweep <id>`: a past sweep's report, rebuilt from MLflow (`lrsweep.analysis.report`)."""

from lrsweep.analysis.report import main

if __name__ == "__main__":
    main()
