"""--store-url: which store a URL means, the error for one we do not have, and the whole wiring
(``code-gateway keys create --store-url=postgresql://...`` writes to that database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.app import GatewayApp
from gateway.auth import hash_key
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.store.urls import open_store


def test_urls_name_stores(tmp_path: Path) -> None:
    default = open_store("", str(tmp_path / "data"))
    assert isinstance(default, SQLiteStore) and default.path == str(tmp_path / "data" / "gateway.db")
    absolute = open_store(f"sqlite:///{tmp_path}/elsewhere/g.db", "unused")
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/elsewhere/g.db"
    assert (tmp_path / "elsewhere").is_dir()
    shared = open_store("postgresql://gateway@db.internal:5432/gateway", "unused")
    assert isinstance(shared, PostgresStore) and shared.url == "postgresql://gateway@db.internal:5432/gateway"


@pytest.mark.parametrize("url, message", [
    ("mysql://db/gateway", "unknown store URL scheme 'mysql'"),
    ("sqlite:///", "unknown store URL scheme 'sqlite'"),
    ("postgresql:///gateway", "needs a host"),
])
def test_a_url_we_cannot_use_stops_the_gateway_naming_the_problem(
        url: str, message: str, monkeypatch: Any, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        GatewayApp().initialize([f"--store-url={url}"])
    assert message in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_STORE_URL", "postgresql://gateway@db.internal/gateway")
    app = GatewayApp()
    app.initialize([])
    assert app.store_url == "postgresql://gateway@db.internal/gateway"


async def test_keys_create_writes_to_the_store_the_url_names(postgres_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gateway", "keys", "create", "carol", f"--store-url={postgres_url}",
               f"--data-dir={tmp_path}"]
    created = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        assert await store.find_api_key(hash_key(key)) == "carol"
    finally:
        await store.close()
    assert not (tmp_path / "gateway.db").exists()  # nothing went to the SQLite default
