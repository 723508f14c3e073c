"""Authentication: Bearer keys from the environment and from `code-gateway keys create` / `revoke`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx

from tests.api.test_errors import assert_error
from tests.gateways import InProcessGateway


async def test_missing_or_wrong_key_is_401(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        assert_error(await anonymous.get("/api/v1/sandboxes"), 401, "unauthorized")
        assert_error(await anonymous.post("/api/v1/sandboxes"), 401, "unauthorized")
        wrong = await anonymous.get("/api/v1/sandboxes", headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "unauthorized")
        basic = await anonymous.get("/api/v1/sandboxes", headers={"Authorization": "Basic YWxpY2U6eA=="})
        assert_error(basic, 401, "unauthorized")


async def test_jupyter_token_scheme_is_accepted(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        response = await client.get("/api/v1/sandboxes", headers={"Authorization": "token alice-key"})
        assert response.status_code == 200


async def test_health_needs_no_key_and_names_the_provisioner(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        health = (await anonymous.get("/health")).json()
    assert health["status"] == "ok"
    assert health["provisioner"] == "local"


async def test_keys_created_by_the_cli_work_while_the_gateway_runs(tmp_path: Any) -> None:
    data_dir = tmp_path / "data"
    async with InProcessGateway(data_dir) as gateway:
        created = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "create", "carol", f"--data-dir={data_dir}"],
            capture_output=True, text=True, check=True,
        )
        key = created.stdout.strip()
        assert key.startswith("cig_") and len(key) > 30
        async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as carol:
            response = await carol.post("/api/v1/sandboxes")
            assert response.status_code == 201
            assert response.json()["owner"] == "carol"
    # Only the hash is stored.
    assert key.encode() not in (data_dir / "gateway.db").read_bytes()


async def test_without_any_key_an_admin_key_is_generated_and_printed(tmp_path: Any, capsys: Any) -> None:
    from gateway.app import GatewayApp

    app = GatewayApp()
    app.initialize(["--port=0", f"--data-dir={tmp_path / 'data'}", "--provisioner=local"])
    await app.startup()
    try:
        printed = capsys.readouterr().out
        key = app.keyring.generated_key
        assert key and key in printed
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.bound_port}") as client:
            ok = await client.get("/api/v1/sandboxes", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
            assert (await client.get("/api/v1/sandboxes")).status_code == 401
    finally:
        await app.shutdown()


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "keys", *args], capture_output=True, text=True)


async def test_keys_created_or_revoked_through_the_store_are_honoured_by_every_replica(tmp_path: Any,
                                                                                     postgres_url: str) -> None:
    from tests.waiting import until

    store = f"--store-url={postgres_url}"
    async with InProcessGateway(tmp_path / "a", store, "--KeyRing.cache_seconds=1") as a, \
            InProcessGateway(tmp_path / "b", store, "--KeyRing.cache_seconds=1") as b:
        first, second = [await a.app.keyring.create("carol") for _ in range(2)]  # made on replica a

        async def status(replica: InProcessGateway, key: str) -> int:
            async with httpx.AsyncClient(base_url=replica.url, headers={"Authorization": f"Bearer {key}"}) as c:
                return (await c.get("/api/v1/usage")).status_code

        for key in (first, second):
            for replica in (a, b):
                assert await status(replica, key) == 200
        # (in a thread: the gateways run on this event loop)
        revoked = await asyncio.to_thread(keys_cli, "revoke", first, store)
        assert revoked.returncode == 0, revoked.stderr
        for replica in (a, b):  # within the cache time, everywhere; the other key of carol's still works
            await until(lambda: status(replica, first), lambda code: code == 401, what="the revoked key refused")
            assert await status(replica, second) == 200
        assert await b.app.keyring.revoke(key=first) == 0  # (gone already)
        everything = await asyncio.to_thread(keys_cli, "revoke", "--user", "carol", store)
        assert everything.returncode == 0 and everything.stdout.strip() == "revoked 1 key of carol", everything.stderr
        for replica in (a, b):
            await until(lambda: status(replica, second), lambda code: code == 401, what="carol's keys refused")
