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
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
_SCHEME = r"\b[A-Za-z][A-Za-z0-9+.\-]*"
# scheme://user:password@ -- SQLAlchemy allows any character but '@' in a password, and a raw
# '@' inside one is common enough (`p@ss`): the password runs to the last '@' before the path's
# query or fragment, else (a '?' or '#' inside it) to the first '@'. A password with blanks
# (`postgresql://u:my secret@h/d`, which SQLAlchemy takes as it is) runs to the first '@' of its
# line, never across another `://`, and on through the '@'s of the token after it; not where a
# host and port come first (`http://127.0.0.1:5000 is up; mail ops@example.com`).
_USERINFO = (
    re.compile(rf"(?P<head>{_SCHEME}://[^\s:/?#@]*):(?P<secret>[^\s?#]*)@"),
    re.compile(rf"(?P<head>{_SCHEME}://[^\s:/?#@]*):(?P<secret>[^\s@]*)@"),
    re.compile(
        rf"(?P<head>{_SCHEME}://(?P<user>[^\s:/?#@]*)):(?=(?:(?!://)[^@\n])*?\s)"
        r"(?P<secret>(?:(?!://)[^@\n])*(?:@[^\s@/?#]*(?=@))*)@"
    ),
)
# the same, percent-encoded inside another URL: `?next=postgresql%3A%2F%2Fu%3Apw%40h%2Fd`
_ENCODED_USERINFO = re.compile(
    rf"(?i)(?P<head>{_SCHEME}%(?:25)?3A%(?:25)?2F%(?:25)?2F(?:[^\s:/?#@&%]|%(?!(?:25)?3A)[0-9A-F]{{2}})*)"
    r"(?P<colon>%(?:25)?3A)(?:(?!%(?:25)?(?:3F|23))[^\s&#])*(?P<at>%(?:25)?40)"
)
# https://TOKEN@host: a user name alone is how tokens go into http(s) URLs (GitHub, proxies)
_TOKEN_USER = re.compile(r"(?P<head>\b(?:https?|wss?)://)(?!\*\*\*@)[^\s:/?#@]+@")
_SECRET_NAMES = (
    r"[\w.\-]*?(?:password|passwd|passphrase|pwd|secret|token|api[_\-]?key|access[_\-]?key"
    r"|private[_\-]?key|credential|signature|authorization)[\w\-]*|sig|key"
)
_EQ = r"\s*(?:=|%(?:25)?3D)\s*"  # '=', also percent-encoded (once or twice)
_AMP = r"%(?:25)?26"  # '&', percent-encoded
# name=value in a query string, a libpq keyword string or a message; the value runs to the
# next separator (quoted values whole, backslash escapes included; unclosed: to the end of the
# line), less the punctuation of the sentence around it
_KEYWORD = re.compile(
    rf"(?i)(?<![\w.\-])(?P<name>{_SECRET_NAMES})(?P<eq>{_EQ})"
    r"(?P<value>'(?:[^'\\\n]|\\.)*'?|\"(?:[^\"\\\n]|\\.)*\"?"
    rf"|(?:(?!{_AMP}|,\s)[^\s&;'\"])+?(?=[:.,)\]]*(?:[\s&;'\"]|{_AMP}|$)))"
)
# a query value with blanks (`?password=my secret&sslmode=require`): up to the next `&name=`
_SPACED_QUERY_VALUE = re.compile(
    rf"(?i)(?<=[?&])(?P<name>{_SECRET_NAMES})(?P<eq>=)(?P<value>[^&#\n]*?\s[^&#\n]*?)"
    r"(?=&[\w.\-]+=)"
)
# a text that is one URL (perhaps after `--option=`): its query values run to the next '&'
_LONE_URL = re.compile(rf"[^\s=]*=?(?P<url>{_SCHEME}://[^\n]*)")
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
_SEEN: set[str] = set()  # passwords with blanks of URLs masked before: masked in later text


def mask_secrets(text: str) -> str:
    """`text` with every secret of a URL or connection string replaced by `***`.

    A password with blanks in it, percent-encoded, or in a URL percent-encoded inside another
    is masked too. A password with blanks of a text that is one URL (what commands print and
    store) is remembered: it is masked wherever it appears in a later text of this process (as
    it is, or percent-encoded), where its blanks could make it look like several words. So are
    the values of the secret environment variables (`SECRET_ENV`).

    >>> mask_secrets("postgresql+psycopg2://alice:s3cret@db:5432/optuna?password=x&sslmode=require")
    'postgresql+psycopg2://alice:***@db:5432/optuna?password=***&sslmode=require'
    """
    lone = _LONE_URL.fullmatch(text.strip())
    if lone:
        text = _mask_lone_url(text, lone["url"])
    for pattern in _USERINFO:
        text = pattern.sub(_masked_userinfo, text)
    text = _ENCODED_USERINFO.sub(rf"\g<head>\g<colon>{MASK}\g<at>", text)
    text = _TOKEN_USER.sub(rf"\g<head>{MASK}@", text)
    text = _SPACED_QUERY_VALUE.sub(rf"\g<name>\g<eq>{MASK}", text)
    text = _KEYWORD.sub(_masked_keyword, text)
    secrets = {os.environ.get(name, "") for name in SECRET_ENV} | _SEEN
    for value in sorted(secrets, key=len, reverse=True):  # a longer one may hold a shorter one
        if len(value) >= _MIN_ENV_SECRET:
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                text = text.replace(form, MASK)
    return text


def _mask_lone_url(text: str, url: str) -> str:
    """`text` (one URL) with each secret query value masked to its '&' and its user-info
    password and secret values remembered in `_SEEN`."""
    for pattern in _USERINFO:
        found = pattern.search(url)
        if found and _is_password(found):
            _remember(found["secret"])
            break
    base, sep, query = url.partition("?")
    if not sep:
        return text
    query, hash_, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and re.fullmatch(f"(?i){_SECRET_NAMES}", name):
            _remember(value)
            part = f"{name}={MASK}"
        parts.append(part)
    return text.replace(url, f"{base}?{'&'.join(parts)}{hash_}{fragment}")


def _remember(secret: str) -> None:
    plain = unquote(secret)  # `p%20ss` is `p ss` to the database driver
    if len(plain) >= _MIN_ENV_SECRET and MASK not in secret and any(c.isspace() for c in plain):
        _SEEN.update((secret, plain))


def _masked_userinfo(match: re.Match[str]) -> str:
    return f"{match['head']}:{MASK}@" if _is_password(match) else match[0]


def _is_password(match: re.Match[str]) -> bool:
    """Whether a `_USERINFO` match is a password, not a host and port with an '@' further on."""
    user = match.groupdict().get("user")  # only the pattern that crosses blanks has it
    host = user is not None and ("." in user or user == "localhost")
    return not (host and re.match(r"\d{1,5}(?:[\s/]|$)", match["secret"]))


def _masked_keyword(match: re.Match[str]) -> str:
    value = match["value"]
    quote_mark = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['name']}{match['eq']}{quote_mark}{MASK}{quote_mark}"


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
