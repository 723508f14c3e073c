"""Store tests run against both stores: SQLite on a small real disk, and a real PostgreSQL 15.

    async def test_x(backend: Backend) -> None:
        store = backend.store()          # a new store on the backend's database (open it yourself)
        backend.fail(); ...; backend.recover()     # a real outage: the disk fills, the server stops
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.store.sql import SQLStore
from tests.stores import BACKENDS, Backend, backend_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, request, tmp_path) as chosen:
        yield chosen


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SQLStore]:
    """An open store on the backend (closed after the test)."""
    opened = backend.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
