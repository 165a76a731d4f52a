"""`python -m lrsweep.range_test --sweep <id>`: the LR range test's suggestion for a past sweep, from MLflow."""

from lrsweep.analysis.range_test import main

if __name__ == "__main__":
    main()
