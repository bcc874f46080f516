"""Secrets in every form a URL or connection string holds them: masked wherever autoall
prints, logs or stores them; plain PostgreSQL URLs get the installed driver."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from autoall.urls import install_log_masking, mask_secrets, sqlite_file, storage_url

SECRET = "S3cr3t-Pa55"

# (form, text holding SECRET, what must stay readable)
FORMS: list[tuple[str, str, str]] = [
    ("user-info", f"postgresql+psycopg2://alice:{SECRET}@db:5432/optuna", "alice:***@db:5432"),
    ("user-info with @", f"postgresql://alice:p@{SECRET}@db/optuna", "alice:***@db/optuna"),
    (
        "user-info with /",
        f"postgresql://alice:x/{SECRET}@db/optuna?app=a@b",
        "***@db/optuna?app=a@b",
    ),
    (
        "query password",
        f"postgresql://alice@db/optuna?password={SECRET}&sslmode=require",
        "password=***&sslmode=require",
    ),
    ("query password encoded", f"postgresql://alice@db/o?password={SECRET}%40x", "password=***"),
    ("query sslpassword", f"postgresql://alice@db/o?sslpassword={SECRET}", "sslpassword=***"),
    ("query token", f"http://mlflow:5000/?token={SECRET}", "token=***"),
    ("query access_token", f"https://h/api?x=1&access_token={SECRET}", "x=1&access_token=***"),
    ("query api key", f"https://h/api?api_key={SECRET}", "api_key=***"),
    (
        "azure sas",
        f"https://acct.blob.core.windows.net/c?sv=2021&sig={SECRET}&se=2030",
        "sv=2021&sig=***&se=2030",
    ),
    (
        "s3 presigned",
        f"https://b.s3.amazonaws.com/k?X-Amz-Signature={SECRET}",
        "X-Amz-Signature=***",
    ),
    ("percent-encoded '='", f"options%3Fpassword%3D{SECRET}%26x%3D1", "password%3D***%26x%3D1"),
    (
        "https token user",
        f"https://{SECRET}@mlflow.example.com/",
        "https://***@mlflow.example.com/",
    ),
    (
        "mlflow user-info",
        f"https://bob:{SECRET}@mlflow.example.com",
        "https://bob:***@mlflow.example.com",
    ),
    (
        "libpq keywords",
        f"host=db port=5432 password={SECRET} user=alice",
        "password=*** user=alice",
    ),
    ("libpq quoted", f"host=db password='{SECRET} x' user=alice", "password='***' user=alice"),
    (
        "in a sentence",
        f"Cannot open postgresql://u@h/d?password={SECRET}: refused",
        "password=***: refused",
    ),
    ("in a repr", f"{{'storage': 'postgresql://u@h/d?password={SECRET}'}}", "password=***'}"),
]


@pytest.mark.parametrize(("text", "kept"), [f[1:] for f in FORMS], ids=[f[0] for f in FORMS])
def test_every_secret_form_is_masked_and_the_rest_kept(text: str, kept: str) -> None:
    masked = mask_secrets(text)
    assert SECRET not in masked and SECRET[2:-2] not in masked, masked
    assert kept in masked, masked
    assert mask_secrets(masked) == masked  # idempotent


@pytest.mark.parametrize(
    "plain",
    [
        "sqlite:///mlruns/mlflow.db",
        "http://127.0.0.1:5000",
        "postgresql+psycopg2://autoall@db-host:5432/autoall",  # the user name is no secret
        "sslkey=/etc/ssl/key.pem sslmode=require",
        "user:pw without scheme",
        "ssh://git@github.com/owner/repo",
    ],
)
def test_text_without_secrets_is_unchanged(plain: str) -> None:
    assert mask_secrets(plain) == plain


def test_the_value_of_a_secret_environment_variable_is_masked_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    assert mask_secrets(f"FATAL: password {SECRET} rejected") == "FATAL: password *** rejected"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "abc")  # too short to mask words
    assert mask_secrets("abc def") == "abc def"


def test_log_records_and_uncaught_tracebacks_are_masked() -> None:
    """In a fresh process: Optuna-style warnings with an exception, and an uncaught error."""
    code = f"""
import logging, sys
from autoall.urls import install_log_masking
install_log_masking()
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
url = "postgresql://u@h/d?password={SECRET}"
logging.getLogger("optuna.study").warning("Trial 3 failed because of %s", url)
try:
    raise ValueError("cannot connect to " + url)
except ValueError:
    logging.getLogger("sqlalchemy").exception("boom")
raise RuntimeError("uncaught: https://bob:{SECRET}@mlflow")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert SECRET not in done.stderr, done.stderr
    assert "Trial 3 failed because of postgresql://u@h/d?password=***" in done.stderr
    assert "ValueError: cannot connect to postgresql://u@h/d?password=***" in done.stderr
    assert "RuntimeError: uncaught: https://bob:***@mlflow" in done.stderr


def test_install_log_masking_is_idempotent(caplog: pytest.LogCaptureFixture) -> None:
    install_log_masking()
    factory = logging.getLogRecordFactory()
    install_log_masking()
    assert logging.getLogRecordFactory() is factory
    with caplog.at_level(logging.WARNING, logger="autoall.test"):
        logging.getLogger("autoall.test").warning("at %s", f"redis://:{SECRET}@h")
    assert caplog.messages == ["at redis://:***@h"]


def test_plain_postgresql_urls_get_the_installed_driver() -> None:
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None or not importlib.util.find_spec("psycopg2"):
        pytest.skip("expects psycopg2 (autoall[postgres]) without psycopg 3")
    assert storage_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert storage_url("postgres://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    for kept in ("postgresql+psycopg2://u@h/d", "sqlite:///autoall.db", "mysql://u@h/d"):
        assert storage_url(kept) == kept


@pytest.mark.parametrize(
    ("url", "file"),
    [
        ("sqlite:///autoall.db", "autoall.db"),
        ("sqlite:///mlruns/mlflow.db?timeout=30", "mlruns/mlflow.db"),
        ("sqlite:////abs/path/s.db", "/abs/path/s.db"),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("postgresql://alice@db/optuna", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_sqlite_file_is_the_database_file_of_optuna_and_mlflow_urls(
    url: str, file: str | None
) -> None:
    assert sqlite_file(url) == (None if file is None else Path(file))


def test_client_uri_makes_a_sqlite_path_absolute_and_keeps_its_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoall.tracking_store import client_uri

    monkeypatch.chdir(tmp_path)
    db = tmp_path.resolve() / "mlruns" / "mlflow.db"
    assert client_uri("sqlite:///mlruns/mlflow.db") == f"sqlite:///{db}"
    assert client_uri("sqlite:///mlruns/mlflow.db?timeout=30") == f"sqlite:///{db}?timeout=30"
    for unchanged in (f"sqlite:///{db}", "http://127.0.0.1:5000", "sqlite:///:memory:"):
        assert client_uri(unchanged) == unchanged
