"""Running code and reading the history: execute, list a sandbox's executions, fetch one."""

from __future__ import annotations

from gateway.api import schemas
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.errors import InvalidRequest, PayloadTooLarge

MAX_CODE_BYTES = 1 << 20


class ExecuteHandler(SandboxAPIHandler):
    """``POST /sandboxes/{id}/execute``: run code, answer with the whole Execution when it ends."""

    def execute_request(self) -> tuple[str, float | None]:
        body = self.json_body(schemas.execute)
        code = body["code"]
        if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
            raise PayloadTooLarge(f"field 'code' is larger than {MAX_CODE_BYTES} bytes (1 MiB)")
        return code, body.get("timeout")

    async def post(self, sandbox_id: str) -> None:
        code, timeout = self.execute_request()
        execution = await self.sandboxes.execute(sandbox_id, self.user, code, timeout=timeout)
        self.write_json(execution.to_public())


def paging(handler: SandboxAPIHandler) -> tuple[int, int]:
    try:
        limit = int(handler.get_argument("limit", "100"))
        offset = int(handler.get_argument("offset", "0"))
    except ValueError:
        raise InvalidRequest("query parameters 'limit' and 'offset' must be integers") from None
    if not 0 < limit <= 1000 or offset < 0:
        raise InvalidRequest("'limit' must be 1..1000 and 'offset' at least 0")
    return limit, offset


class SandboxExecutionsHandler(SandboxAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        limit, offset = paging(self)
        executions = await self.sandboxes.list_executions(sandbox_id, self.user, limit=limit, offset=offset)
        self.write_json({"executions": [e.to_public() for e in executions]})


class ExecutionHandler(SandboxAPIHandler):
    async def get(self, execution_id: str) -> None:
        self.write_json((await self.sandboxes.get_execution(execution_id, self.user)).to_public())
