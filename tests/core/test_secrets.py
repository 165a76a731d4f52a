"""A password in a store URI is replaced by *** wherever lrsweep writes text: messages, log lines, MLflow."""

from __future__ import annotations

import logging

import pytest

from lrsweep.core import errors, secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tracking.uri=http://alice:s3cr%40t@127.0.0.1:5000", "tracking.uri=http://alice:***@127.0.0.1:5000"),
        ("https://alice:p@ss@host/path", "https://alice:***@host/path"),  # an unescaped @ in the password
        ("postgresql+psycopg2://mlflow:pw@/mlflow?host=/run/pg", "postgresql+psycopg2://mlflow:***@/mlflow?host=/run/pg"),
        ("postgresql://mlflow@db/mlflow?password=pw&sslmode=require", "postgresql://mlflow@db/mlflow?password=***&sslmode=require"),
        ("a http://u:p@h and https://v:q@k/x", "a http://u:***@h and https://v:***@k/x"),
        ("uri: 'http://u:p@h:5000'", "uri: 'http://u:***@h:5000'"),  # in YAML, quoted
        ("#0 : uri=http\\://u\\:p@h\\:5000 seed=1", "#0 : uri=http\\://u\\:***@h\\:5000 seed=1"),  # as Hydra logs it
        ('{"uri": "http\\\\://u\\\\:p@h\\\\:5000"}', '{"uri": "http\\\\://u\\\\:***@h\\\\:5000"}'),  # that in JSON
    ],
)  # fmt: skip
def test_a_uris_password_is_replaced_and_the_rest_kept(text, expected):
    assert secrets.redact(text) == expected
    assert secrets.redact(expected) == expected  # redacting twice changes nothing


@pytest.mark.parametrize(
    "text",
    ["sqlite:///mlruns/mlflow.db", "http://127.0.0.1:5000", "http://alice@host:5000", "file:///a:b/c", "ratio 1:2 @ 3"],
)
def test_text_without_a_password_is_left_as_it_is(text):
    assert secrets.redact(text) == text


def test_user_errors_never_carry_the_password():
    error = errors.StoreError("No MLflow tracking server answers at tracking.uri=http://alice:pw@127.0.0.1:9")
    assert str(error) == "No MLflow tracking server answers at tracking.uri=http://alice:***@127.0.0.1:9"
    assert "pw@" not in str(errors.ConfigError("tracking.uri=http://alice:pw@h: bad"))


def test_every_log_record_is_redacted_once_installed(caplog):
    factory = logging.getLogRecordFactory()
    try:
        secrets.redact_logs()
        secrets.redact_logs()  # once only
        with caplog.at_level(logging.INFO):
            logging.getLogger("hydra.core").info("#0 : tracking.uri=%s seed=%d", "http://a:pw@h:1", 3)
        assert caplog.records[-1].getMessage() == "#0 : tracking.uri=http://a:***@h:1 seed=3"
        # A library's call whose arguments do not fit its format: made into a record as without redaction (logging's
        # handler reports it when it formats the record), never an error where the call is.
        broken = logging.getLogRecordFactory()("lib", logging.WARNING, __file__, 1, "%d items", ("many",), None)
        assert (broken.msg, broken.args) == ("%d items", ("many",))
        assert logging.getLogRecordFactory().__wrapped__ is factory
    finally:
        logging.setLogRecordFactory(factory)
