"""Scale-out on one machine: three gateway replicas (separate processes) sharing one real PostgreSQL 15
and one Docker engine, clients spread over them. Any replica serves any sandbox; SIGKILL the one
holding a busy sandbox and the others take it over on their own — the same container, its
variables intact, only the execution that was running there failed ``replica_lost``; quotas hold
across replicas; and no replica ever removes a container another live replica holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import docker.errors
import httpx
import pytest

from tests.gateways import GatewayProcess, create, run
from tests.provisioned import container_of, containers_labelled
from tests.waiting import hold, until, until_running

pytestmark = pytest.mark.docker

LEASE_TIMEOUT = 4.0


@pytest.fixture
async def replicas(tmp_path: Path, docker_client: Any, postgres_url: str) -> AsyncIterator[list[GatewayProcess]]:
    processes = [GatewayProcess(tmp_path / f"r{n}", f"--store-url={postgres_url}", f"--lease-timeout={LEASE_TIMEOUT:g}",
                                "--max-sandboxes-per-user=3", provisioner="docker") for n in range(3)]
    try:
        await asyncio.gather(*(process.start() for process in processes))
        yield processes
    finally:
        for process in processes:  # SIGKILL: what they hold is left for the cleanup below
            process.kill()
        # (Other tests' containers come and go meanwhile: only these replicas' are listed, and one
        # already gone is no error.)
        for replica_id in [p.data_dir.joinpath("replica-id").read_text().strip()
                           for p in processes if p.data_dir.joinpath("replica-id").exists()]:
            for container in containers_labelled(docker_client, f"code-gateway.instance={replica_id}"):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)


async def lease_holder(postgres_url: str, sandbox_id: str) -> str | None:
    """Who holds the sandbox, read straight from the database (no replica is asked: none takes it over on demand)."""
    connection = await asyncpg.connect(postgres_url)
    try:
        holder: str | None = await connection.fetchval("SELECT holder FROM leases WHERE sandbox_id = $1", sandbox_id)
        return holder
    finally:
        await connection.close()


def replica_id(process: GatewayProcess) -> str:
    return process.data_dir.joinpath("replica-id").read_text().strip()


async def test_three_replicas_serve_any_sandbox_and_survive_the_death_of_one(
        replicas: list[GatewayProcess], docker_client: Any, postgres_url: str) -> None:
    r0, r1, r2 = replicas
    async with r0.client() as c0, r1.client() as c1, r2.client() as c2:
        # Create on one, execute on another, stream from a third, history and notebook from any.
        sid = (await create(c0))["id"]
        assert await lease_holder(postgres_url, sid) == replica_id(r0)
        assert (await run(c1, sid, "x = 41"))["status"] == "completed"
        events = []
        async with c2.stream("POST", f"/api/v1/sandboxes/{sid}/execute", headers={"Accept": "application/x-ndjson"},
                             json={"code": "for i in range(3): print(i, flush=True)\nx + 1"}) as stream:
            async for line in stream.aiter_lines():
                if line:
                    events.append(json.loads(line))
        # Stream text that comes before a client has the previous event joins it: one event or three.
        streamed = [e["output"] for e in events if e["type"] == "output" and e["output"]["output_type"] == "stream"]
        assert "".join(o["text"] for o in streamed) == "0\n1\n2\n"
        assert events[-1]["execution"]["result"] == {"text/plain": "42"}
        for client in (c0, c1, c2):
            history = (await client.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
            assert [e["code"] for e in history][:1] == ["x = 41"] and len(history) == 2
            notebook = (await client.get(f"/api/v1/sandboxes/{sid}/notebook")).json()
            assert [cell["source"] for cell in notebook["cells"]][:1] == ["x = 41"]
        other = (await create(c1))["id"]  # held by r1 from here on
        assert (await run(c2, other, "y = 'kept'"))["status"] == "completed"
        container = container_of(docker_client, sid).id

        # The holder dies with the sandbox busy (the execution came through another replica).
        busy = await until_running(c1, sid, hold())
        r0.kill()
        with pytest.raises(httpx.HTTPError):
            await busy  # (r1 was relaying r0's answer: the connection ends with r0)
        # r1 and r2 notice on their own (nobody asks them anything): one of them takes the lease once
        # r0's heartbeat lapsed, re-attaches the kernel, and fails only what was running there.
        survivors = {replica_id(r1), replica_id(r2)}
        await until(lambda: lease_holder(postgres_url, sid), lambda holder: holder in survivors,
                    what="a surviving replica to take the sandbox over", timeout=LEASE_TIMEOUT * 5, interval=0.1)
        history = (await c2.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
        lost = history[-1]
        assert lost["status"] == "failed" and lost["error"]["code"] == "replica_lost", lost
        assert [e["status"] for e in history[:-1]] == ["completed", "completed"]  # nothing acknowledged is lost
        # The same container, its variables intact, served by either survivor.
        assert container_of(docker_client, sid).id == container
        assert (await run(c2, sid, "x + 1"))["result"] == {"text/plain": "42"}
        assert (await run(c1, sid, "x * 2"))["result"] == {"text/plain": "82"}
        assert (await run(c1, other, "y"))["result"] == {"text/plain": "'kept'"}

        # r0 comes back: its start-up touches nothing the others hold now (their containers stay,
        # their sandboxes keep working), and through it every sandbox is served again.
        await r0.start()
        async with r0.client() as again:
            assert (await run(again, sid, "x"))["result"] == {"text/plain": "41"}
            assert (await run(again, other, "y"))["result"] == {"text/plain": "'kept'"}
        assert container_of(docker_client, sid).id == container
        assert await lease_holder(postgres_url, sid) in survivors


async def test_quotas_hold_across_replicas(replicas: list[GatewayProcess]) -> None:
    clients = [process.client("bob") for process in replicas]
    try:
        # Six creates at once, two on each replica, for a user who may have three live sandboxes.
        answers = await asyncio.gather(*(client.post("/api/v1/sandboxes", json={}) for client in clients * 2))
        made = [a.json()["id"] for a in answers if a.status_code == 201]
        refused = [a for a in answers if a.status_code != 201]
        assert len(made) == 3, [a.text for a in answers]
        assert all(a.status_code == 429 and a.json()["error"]["code"] == "quota_exceeded" for a in refused)
        # One deleted (through a replica that does not hold it): a slot is free again, everywhere.
        assert (await clients[2].delete(f"/api/v1/sandboxes/{made[0]}")).status_code == 204
        assert (await clients[0].post("/api/v1/sandboxes", json={})).status_code == 201
        assert (await clients[1].post("/api/v1/sandboxes", json={})).status_code == 429
        usage = (await clients[2].get("/api/v1/usage")).json()
        assert usage["sandboxes"] == {"used": 3, "limit": 3}
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
