"""URLs autoall prints, logs or stores: secrets masked, database drivers named.

Every URL that reaches a terminal, a log, an MLflow param or tag, a report or an exported table
goes through `mask_secrets` first. It masks every form a secret takes in a URL or a connection
string:

- the password of `scheme://user:password@host` (user kept: it says who connects);
- a token given as the user of an http(s) URL, `https://TOKEN@host`;
- query and keyword values whose name says secret (`?password=`, `&token=`, `sig=`,
  `api_key=`, `X-Amz-Signature=`, libpq's `password=...`), `=` also percent-encoded;
- the value of a secret environment variable (PGPASSWORD, MLFLOW_TRACKING_PASSWORD,
  MLFLOW_TRACKING_TOKEN, ...) wherever it appears literally.

`install_log_masking()` applies it to every log record of the process (Optuna's failed-trial
warnings, MLflow's and SQLAlchemy's messages, their tracebacks) and to uncaught tracebacks.
`storage_url` names the driver PostgreSQL URLs need with the drivers installed here;
`sqlite_file` is the file of a SQLite URL (Optuna's storage and MLflow's store alike).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

MASK = "***"
# scheme://user:password@ -- SQLAlchemy allows any character but '@' in a password, and a raw
# '@' inside one is common enough (`p@ss`): the password runs to the last '@' before the path's
# query or fragment, else (a '?' or '#' inside it) to the first '@'.
_USERINFO = (
    re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):[^\s?#]*@"),
    re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):[^\s@]*@"),
)
# https://TOKEN@host: a user name alone is how tokens go into http(s) URLs (GitHub, proxies)
_TOKEN_USER = re.compile(r"(?P<head>\b(?:https?|wss?)://)(?!\*\*\*@)[^\s:/?#@]+@")
_SECRET_NAMES = (
    r"[\w.\-]*?(?:password|passwd|passphrase|pwd|secret|token|api[_\-]?key|access[_\-]?key"
    r"|private[_\-]?key|credential|signature|authorization)[\w\-]*|sig|key"
)
# name=value in a query string, a libpq keyword string or a message; the value runs to the
# next separator (quoted values whole), less the punctuation of the sentence around it
_KEYWORD = re.compile(
    rf"(?i)(?<![\w.\-])(?P<name>{_SECRET_NAMES})(?P<eq>\s*(?:=|%3D)\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|(?:(?!%26|,\s)[^\s&;'\"])+?(?=[:.,)\]]*(?:[\s&;'\"]|%26|$)))"
)
SECRET_ENV = (
    "PGPASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "DATABRICKS_TOKEN",
)
_MIN_ENV_SECRET = 4  # shorter values would mask ordinary words


def mask_secrets(text: str) -> str:
    """`text` with every secret of a URL or connection string replaced by `***`.

    >>> mask_secrets("postgresql+psycopg2://alice:s3cret@db:5432/optuna?password=x&sslmode=require")
    'postgresql+psycopg2://alice:***@db:5432/optuna?password=***&sslmode=require'
    """
    for pattern in _USERINFO:
        text = pattern.sub(rf"\g<head>:{MASK}@", text)
    text = _TOKEN_USER.sub(rf"\g<head>{MASK}@", text)
    text = _KEYWORD.sub(_masked_keyword, text)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_ENV_SECRET and value in text:
            text = text.replace(value, MASK)
    return text


def _masked_keyword(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['name']}{match['eq']}{quote}{MASK}{quote}"


def install_log_masking() -> None:
    """Mask secrets in every log record this process makes from now on (message, arguments and
    traceback), and in the traceback of an uncaught exception. Idempotent."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_autoall_masking", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return record
        record.msg, record.args = mask_secrets(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return record

    factory._autoall_masking = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    sys.excepthook = _masked_excepthook


def _masked_excepthook(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    sys.stderr.write(mask_secrets("".join(traceback.format_exception(kind, value, tb))))


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///` URL, query string cut (None for other URLs and in-memory
    databases): `sqlite:///mlruns/mlflow.db?timeout=30` -> `mlruns/mlflow.db`."""
    if not url.startswith(_SQLITE):
        return None
    path = url.removeprefix(_SQLITE).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def storage_url(url: str) -> str:
    """`url` with the PostgreSQL driver that is installed here named, so a plain
    `postgresql://` (or Heroku's `postgres://`) URL works with `pip install 'autoall[postgres]'`.

    SQLAlchemy 2.1 reads a plain `postgresql://` as psycopg 3; autoall's `postgres` extra installs
    psycopg2. With psycopg 3 installed the URL is left to it. Other URLs are returned unchanged.
    """
    scheme = next((s for s in _POSTGRES_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        return url
    rest = url[len(scheme) :]
    if scheme == "postgresql://" and _importable("psycopg"):
        return url
    if _importable("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    if _importable("psycopg"):
        return f"postgresql+psycopg://{rest}"
    return url  # neither driver: make_storage says which to install


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
