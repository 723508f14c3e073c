"""A real PostgreSQL 15 for the tests, started by the project's own script (deploy/host/ensure-postgres.sh).

    def test_x(postgres_url: str) -> None: ...          # a fresh, empty database of its own
    def test_y(postgres_server: PostgresServer) -> None:
        postgres_server.stop(); ...; postgres_server.start()   # an outage

One server per test session (initdb into a temporary directory, a free loopback port), stopped
and removed at the end; each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "host" / "ensure-postgres.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self, directory: str, port: int) -> None:
        self.directory = directory
        self.port = port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (a no-op while it runs)."""
        self._script("start", self.directory, str(self.port))

    def stop(self) -> None:
        self._script("stop", self.directory)

    def create_database(self, name: str) -> None:
        self._client("createdb", name)

    def drop_database(self, name: str) -> None:
        self._client("dropdb", "--force", name)

    def _client(self, program: str, *args: str) -> None:
        command = [str(PG_BIN / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{program} {' '.join(args)}: {done.stderr}"

    def _script(self, *args: str) -> None:
        done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"ensure-postgres.sh {' '.join(args)} failed: {done.stderr[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    directory = tempfile.mkdtemp(prefix="code-gateway-pg-")
    server = PostgresServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (dropped after the test)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    yield postgres_server.url(name)
    postgres_server.start()  # if the test stopped it
    postgres_server.drop_database(name)
