"""Passwords out of everything lrsweep writes: a store URI may carry one, and it is written in many places.

`tracking.uri=postgresql://mlflow:secret@db/mlflow` or `http://user:secret@host:5000` works, but the URI is in every
job's config, its overrides, its params and tags, Hydra's log lines and lrsweep's error messages. `redact` replaces
the password in any text with `***` (a URI's `user:password@`, a `password=` query value); `redact_logs` makes every
log record of this process redacted, whichever logger or handler writes it. The MLflow client that
`lrsweep.tracking.connect` returns redacts what it writes (`lrsweep.tracking.client`), and `lrsweep.core.errors`' user
errors redact their messages. Credentials belong in `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (or a
PostgreSQL password file) rather than in the URI: then there is nothing to redact.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@ (the password: anything up to the last @ before the host, but no space or slash), also
# as Hydra logs an override, its colons escaped (`tracking.uri=http\://user\:password@host`), and that again in JSON
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*\\*://[^:/@\s'\"\\]*)(?P<colon>\\*:)(?P<password>[^/\s'\"]*)@"
)
# ?password=... / &password=... (libpq's keyword in a URI's query)
_QUERY = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password of a URI in it replaced by `***`; the user, host and path stay."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{m['colon']}{MASK}@" if m["password"] != MASK else m[0], text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_logs() -> None:
    """Every log record this process makes from now on carries its message redacted (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a call whose arguments do not fit its format: its handler reports that, as without us
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    redacted_record.redacts = True
    redacted_record.__wrapped__ = factory
    logging.setLogRecordFactory(redacted_record)
