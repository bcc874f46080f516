"""Shared fixtures: a fast digits study file, a scratch working directory per test, and one
real `mlflow server` per session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

# A runner that starts the suite in the background (`make test &`, nohup, some CI agents) hands
# it SIGINT ignored, and every process a test starts would inherit that: `autoall ui` or
# `study run` would then shrug off the Ctrl-C a test sends, as no terminal user's would. The
# tests run as from a terminal: Python's own Ctrl-C handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Two cores on CI: tests in one process should not fight over threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """autoall's cache (split indices) in a temporary folder, inherited by CLI subprocesses."""
    old = os.environ.get("AUTOALL_CACHE")
    os.environ["AUTOALL_CACHE"] = str(tmp_path_factory.mktemp("autoall-cache"))
    yield
    if old is None:
        os.environ.pop("AUTOALL_CACHE", None)
    else:
        os.environ["AUTOALL_CACHE"] = old


@pytest.fixture(autouse=True)
def _sigint_handler_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with the SIGINT handler the session had. A test that runs a worker's
    entry point in this process (as `_worker_process`) installs that worker's own handler, as
    its process would; it must not change how a later test's Ctrl-C lands. A handler left over
    is put back and named in a warning, so a leak in autoall itself shows in the summary."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left the SIGINT handler {after!r}", stacklevel=1)


def write_study(path: Path, **overrides: Any) -> Path:
    """A digits study that runs a trial in well under a second on one CPU core."""
    study: dict[str, Any] = {
        "name": "t",
        "data": {"name": "digits"},
        "architectures": ["mlp"],
        "train": {"epochs": 3, "batch_size": 128, "warmup_epochs": 0},
        "search": {
            "hidden_size": {"type": "int", "low": 8, "high": 32, "log": True},
            "all_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "aux_weight": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "aux_loss": {"type": "categorical", "choices": ["reconstruction", "none"]},
        },
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "none"},
        "n_trials": 4,
        "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite MLflow store with its tables made once (its migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so autoall.db and mlruns/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AUTOALL_STORAGE", raising=False)
    return tmp_path


@pytest.fixture
def study_file(workdir: Path) -> Path:
    return write_study(workdir / "study.yaml")


@pytest.fixture
def tracked(workdir: Path, empty_store: Path) -> Path:
    """The test's working directory with the default store, ./mlruns/mlflow.db, in place."""
    (workdir / "mlruns").mkdir()
    shutil.copyfile(empty_store, workdir / "mlruns" / "mlflow.db")
    return workdir


def free_port() -> int:
    """A loopback TCP port that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """A running `mlflow server`: its URL, its process (the leader of its own group)."""

    url: str
    process: subprocess.Popen[bytes]

    def group_pids(self) -> list[int]:
        """Live (non-zombie) processes in the server's process group."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> list[int]:
        """SIGTERM the whole group, SIGKILL what is left after 10 s; returns the survivors."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not self.group_pids():
                    return []
                time.sleep(0.1)
        return self.group_pids()

    def rest(self, endpoint: str, **query: str) -> dict[str, Any]:
        url = f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.load(response))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (SQLite backend, one worker) on a free loopback port."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the server's child processes")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri"]
    command += [f"sqlite:///{root}/m.db", "--default-artifact-root", str(root / "art")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not come up on port {port}:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        survivors = server.stop()
    assert survivors == [], f"mlflow server processes left after stopping: {survivors}"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, no psycopg2, or a private cluster that would not start."""


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster under `root`: data in `root/data`, socket and log in `root`.

    The bootstrap superuser is `user` with a SCRAM password; the server listens on 127.0.0.1
    only. When the caller is root, every server command runs as the `postgres` system user
    (PostgreSQL refuses to run as root).
    """

    root: Path
    bindir: Path
    port: int
    password: str
    options: tuple[str, ...] = ()  # extra `-c name=value` server settings
    user: str = "autoall"
    database: str = "autoall"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the default database, password included."""
        return self.url_for(self.database)

    def url_for(self, database: str, *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql+psycopg2://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    def _tool(self, name: str, *args: str, timeout: float = 120) -> None:
        """Run a PostgreSQL program as the `postgres` user if we are root; raise with its output."""
        command = [str(self.bindir / name), *args]
        if os.geteuid() == 0:
            import shutil

            runuser = shutil.which("runuser")
            if runuser:
                command = [runuser, "-u", "postgres", "--", *command]
            else:
                import shlex

                command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{name} {' '.join(args[:1])} failed (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}\n{tail}"
            )

    def init(self) -> None:
        """initdb with a password file (read once, then deleted), then start and make `database`."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        _give_to_postgres(pwfile)
        try:
            self._tool(
                "initdb",
                "-D",
                str(self.root / "data"),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.start()
        self.create_database(self.database)

    def start(self) -> None:
        """pg_ctl start, waiting until the server accepts connections."""
        settings = ["-k", str(self.root), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1"]
        for option in self.options:
            settings += ["-c", option]
        self._tool(
            "pg_ctl",
            "start",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(settings),
        )

    def stop(self) -> None:
        """pg_ctl stop -m fast: open connections are cut, as in a crash of the database host."""
        self._tool("pg_ctl", "stop", "-D", str(self.root / "data"), "-m", "fast", "-w")

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """Stop, stay down `down_seconds`, start again on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_for(name)


def _give_to_postgres(path: Path) -> None:
    """chown `path` to the `postgres` system user when we are root (its server runs as that user)."""
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _postgres_bindir() -> Path:
    """The folder of initdb and pg_ctl: $PATH first, then /usr/lib/postgresql/<newest>/bin."""
    import shutil

    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    raise PostgresUnavailable("initdb and pg_ctl are not on PATH nor under /usr/lib/postgresql")


def start_postgres(*, options: tuple[str, ...] = ()) -> PostgresCluster:
    """initdb and start a private cluster in a new folder under the system temp dir.

    Not under pytest's tmp_path: as root that lies in a 0700 folder the `postgres` user cannot
    enter. The caller stops it (`stop()`) and removes `root`.
    """
    import secrets
    import tempfile

    try:
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(
            f"psycopg2 is not installed ({exc}); pip install '.[postgres]'"
        ) from None
    bindir = _postgres_bindir()
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root, and there is no `postgres` user") from None
    root = Path(tempfile.mkdtemp(prefix="autoall-pg-"))
    _give_to_postgres(root)
    cluster = PostgresCluster(
        root=root,
        bindir=bindir,
        port=free_port(),
        password=secrets.token_urlsafe(12),
        options=options,
    )
    try:
        cluster.init()
    except BaseException:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One private PostgreSQL cluster for the session (durability off: tests, not data).

    Without PostgreSQL the tests that use it skip with the reason, except under CI (CI=true),
    where that fails the suite.
    """
    import shutil

    try:
        cluster = start_postgres(options=("fsync=off", "synchronous_commit=off"))
    except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        reason = f"PostgreSQL is not available: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        with contextlib.suppress(PostgresUnavailable):
            cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresCluster) -> str:
    """`postgresql+psycopg2://autoall:<password>@127.0.0.1:<port>/autoall` of the session cluster."""
    return postgres.url


@pytest.fixture
def postgres_db(postgres: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database in the session cluster, one per test."""
    import re

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    return postgres.create_database(f"{name}_{os.getpid()}_{time.monotonic_ns() % 10**6}")
