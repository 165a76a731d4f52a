"""The errors a user fixes rather than a bug: they print as one line naming the value and the fix, no traceback.

`ValueError` (and its subclass `lrsweep.data.DataError`) raised while a job's config is checked, before any work,
is a bad input; `StoreError` is an MLflow store that cannot be used, at any time. `train.py` prints either as
`lrsweep: <message>` and exits 1 (`HYDRA_FULL_ERROR=1` shows the traceback).
"""

from __future__ import annotations


class StoreError(ConnectionError):
    """The MLflow store cannot be used: unreachable, unwritable, not a database, a schema of another MLflow, full.

    The message names the URI or path, what is wrong and what to do.
    """
