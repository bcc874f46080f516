"""Secrets in every form a URL or connection string holds them: masked wherever autoall
prints, logs or stores them; plain PostgreSQL URLs get the installed driver."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from autoall._secrets import install_log_masking, mask_secrets, sqlite_file, storage_url

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


# Passwords with blanks and percent-encoding. Each case has a password of its own, with a space
# and a tab: no case is masked only because an earlier one taught `mask_secrets` its password.
SPACED: list[tuple[str, str, str]] = [
    ("user-info", "postgresql+psycopg2://alice:{pw}@db:5432/optuna", "alice:***@db:5432/optuna"),
    (
        "user-info, query",
        "postgresql://alice:{pw}@db/o?sslmode=require",
        "***@db/o?sslmode=require",
    ),
    ("user-info with @", "postgresql://alice:{pw}@x@db/optuna", "alice:***@db/optuna"),
    (
        "user-info in a sentence",
        "Cannot open postgresql://u:{pw}@h/d: refused",
        "u:***@h/d: refused",
    ),
    (
        "after a URL without one",
        "MLflow UI: http://127.0.0.1:5000  (postgresql://u:{pw}@h/d; Ctrl-C stops it)",
        "MLflow UI: http://127.0.0.1:5000  (postgresql://u:***@h/d; Ctrl-C stops it)",
    ),
    (
        "in a repr",
        "{{'storage': 'postgresql://u:{pw}@h/d'}}",
        "{'storage': 'postgresql://u:***@h/d'}",
    ),
    (
        "query, then more",
        "postgresql://u@h/d?password={pw}&sslmode=require",
        "password=***&sslmode=require",
    ),
    ("query, last", "postgresql://u@h/d?password={pw}", "postgresql://u@h/d?password=***"),
    (
        "option value",
        "--storage=postgresql://u@h/d?sslpassword={pw}",
        "--storage=postgresql://u@h/d?sslpassword=***",
    ),
    (
        "libpq quoted, escaped quote",
        "host=db password='it\\'s {pw}' user=alice",
        "password='***' user=alice",
    ),
    ("user-info percent-encoded", "postgresql://alice:{pct}@db/o", "alice:***@db/o"),
    ("query percent-encoded", "http://h/?token={pct}&x=1", "token=***&x=1"),
    ("query, '+' for blanks", "http://h/?password={plus}&x=1", "password=***&x=1"),
    (
        "a URL encoded in another",
        "https://sso.example/login?next=postgresql%3A%2F%2Falice%3A{pct}%40db%2Fo",
        "next=postgresql%3A%2F%2Falice%3A***%40db%2Fo",
    ),
    (
        "encoded twice",
        "https://sso.example/login?next=postgresql%253A%252F%252Falice%253A{pct2}%2540db",
        "next=postgresql%253A%252F%252Falice%253A***%2540db",
    ),
]


@pytest.mark.parametrize(("form", "kept"), [f[1:] for f in SPACED], ids=[f[0] for f in SPACED])
def test_passwords_with_blanks_and_percent_encoding_are_masked(form: str, kept: str) -> None:
    import secrets
    from urllib.parse import quote, quote_plus

    words = [secrets.token_hex(4) for _ in range(3)]  # a fresh password per case
    pw = f"{words[0]} {words[1]}\t{words[2]}"
    text = form.format(
        pw=pw, pct=quote(pw, safe=""), plus=quote_plus(pw), pct2=quote(quote(pw, safe=""), safe="")
    )
    masked = mask_secrets(text)
    assert not [w for w in words if w in masked], masked
    assert kept in masked, masked
    assert mask_secrets(masked) == masked  # idempotent


def test_a_password_seen_in_a_url_is_masked_in_later_text_in_every_encoding() -> None:
    """A storage URL masked once (as every command does before it prints it) teaches its
    password: a driver's message that quotes it, as it is or percent-encoded, is masked too."""
    from urllib.parse import quote, quote_plus

    pw = "Pa55 with\tblanks-4f1c"
    assert mask_secrets(f"postgresql://u:{quote(pw, safe='')}@h/d") == "postgresql://u:***@h/d"
    said = f"FATAL: password '{pw}' rejected; tried {quote(pw, safe='')} and {quote_plus(pw)}"
    assert mask_secrets(said) == "FATAL: password '***' rejected; tried *** and ***"
    assert mask_secrets("Pa55 alone") == "Pa55 alone"  # only the whole password
    # a password without blanks is masked where it stands, never taught: other texts keep the word
    assert mask_secrets("postgresql://u:Hunter2x@h/d") == "postgresql://u:***@h/d"
    assert mask_secrets("Hunter2x") == "Hunter2x"


@pytest.mark.parametrize(
    "plain",
    [
        "sqlite:///mlruns/mlflow.db",
        "http://127.0.0.1:5000",
        "postgresql+psycopg2://autoall@db-host:5432/autoall",  # the user name is no secret
        "sslkey=/etc/ssl/key.pem sslmode=require",
        "user:pw without scheme",
        "ssh://git@github.com/owner/repo",
        "MLflow UI: http://127.0.0.1:5000  (sqlite:///mlruns/mlflow.db; Ctrl-C stops it)",
        "http://127.0.0.1:5000 is up; mail admin at ops@example.com",  # no ':' before the '@'
        "postgresql://u@h/d?sslmode=require&application_name=my app",
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
from autoall._secrets import install_log_masking
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
    from autoall.tracking._store import client_uri

    monkeypatch.chdir(tmp_path)
    db = tmp_path.resolve() / "mlruns" / "mlflow.db"
    assert client_uri("sqlite:///mlruns/mlflow.db") == f"sqlite:///{db}"
    assert client_uri("sqlite:///mlruns/mlflow.db?timeout=30") == f"sqlite:///{db}?timeout=30"
    for unchanged in (f"sqlite:///{db}", "http://127.0.0.1:5000", "sqlite:///:memory:"):
        assert client_uri(unchanged) == unchanged
