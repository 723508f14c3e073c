"""Attacks from inside a sandbox with deeply nested JSON: outputs and replies thousands of levels deep.

Code in a sandbox controls every field of what its kernel sends. JSON nested deeper than any
recursive parser or encoder takes (100,000 levels: the standard library's stops near 1000,
orjson's at 254) must neither fail the execution nor vanish unsaid: each output nested deeper
than ``MAX_DEPTH`` becomes a note of its kind, the execution completes, is stored, answered and
streamed as any other, and the gateway keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import nbformat
import pytest

from gateway.execution.outputs import MAX_DEPTH
from tests.api.test_streaming import ndjson_events
from tests.provisioned import PROVISIONERS, alice, create, each_gateway, gateway_for, run  # noqa: F401  (fixtures)

#: Sends, for the running execution, outputs whose content the kernel wrote by hand (signed by
#: its own session: the gateway reads them): nested 100,000 levels (too deep to be read at all)
#: and 600 (read by the standard library, deeper than ``MAX_DEPTH``), in every kind of output.
#: ``display(..., raw=True)`` nests 200 levels the ordinary way (orjson reads those).
NESTED = r'''
_k = get_ipython().kernel
def _send(kind, content):
    _k.session.send(_k.iopub_socket, kind, content, parent=_k.get_parent("shell"), ident=kind.encode())
def _deep(levels):
    return b"[" * levels + b"]" * levels
_nested = []
for _ in range(200):
    _nested = [_nested]
display({"application/json": _nested, "text/plain": "deep"}, raw=True)
_send("display_data", b'{"data": {"application/json": ' + _deep(100_000) + b'}, "metadata": {}, "transient": {}}')
_send("execute_result", b'{"data": {"text/plain": "r"}, "metadata": ' + _deep(600) + b', "execution_count": 1}')
_send("error", b'{"ename": "Deep", "evalue": "v", "traceback": ' + _deep(100_000) + b'}')
_send("error", b'{"ename": ' + _deep(600) + b', "evalue": "v", "traceback": []}')
_send("update_display_data", b'{"data": {}, "metadata": {}, "transient": {"display_id": ' + _deep(100_000) + b'}}')
_send("stream", b'{"name": "stdout", "text": ' + _deep(600) + b'}')
print("after")
'''
#: The kinds of the outputs NESTED sends, in order, each replaced by a note.
KINDS = ["display_data", "display_data", "execute_result", "error", "error", "display_data", "stream"]

#: Makes this execution's execute_reply (only this one's: the method is put back) one the
#: kernel wrote by hand: an error whose traceback and count are nested ``REPLY_LEVELS`` deep.
CRAFTED_REPLY = r'''
_k = get_ipython().kernel
_send = _k.session.send
def _crafted(stream, msg_or_type, content=None, *args, **kwargs):
    kind = msg_or_type if isinstance(msg_or_type, str) else msg_or_type["header"]["msg_type"]
    if kind != "execute_reply":
        return _send(stream, msg_or_type, content, *args, **kwargs)
    _k.session.send = _send
    deep = b"[" * REPLY_LEVELS + b"]" * REPLY_LEVELS
    sent = _send(stream, msg_or_type, b'{"status": "error", "ename": "Crafted", "evalue": "v", '
                 b'"traceback": ["first", ' + deep + b'], "execution_count": ' + deep + b'}', *args, **kwargs)
    sent["content"] = content  # (what ipykernel reads of the reply it sent)
    return sent
_k.session.send = _crafted
print("ran")
'''


def notes(outputs: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """Each output's kind and whether it says it was dropped for its nesting."""
    said = f"nested deeper than {MAX_DEPTH} levels"
    return [(o["output_type"], said in json.dumps(o)) for o in outputs]


async def test_outputs_nested_too_deep_become_notes_and_the_execution_completes(
    each_gateway: Any, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    execution = await run(alice, sid, NESTED)
    assert execution["status"] == "completed" and execution["truncated"] is True, execution
    outputs = execution["outputs"]
    assert notes(outputs) == [(kind, True) for kind in KINDS], outputs
    assert outputs[-1]["name"] == "stdout" and outputs[-1]["text"].endswith("]\nafter\n")  # (joined to the note)
    assert [o["ename"] for o in outputs if o["output_type"] == "error"] == ["Error", "Error"]  # (nothing of theirs kept)
    assert execution["stdout"].endswith("after\n")
    # Stored as answered, and a valid notebook.
    stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
    assert stored["outputs"] == outputs and stored["status"] == "completed"
    notebook = nbformat.reads((await alice.get(f"/api/v1/sandboxes/{sid}/notebook")).text, as_version=4)
    nbformat.validate(notebook)
    # Streamed live the same way.
    events = [event for _, event in await ndjson_events(alice, sid, {"code": NESTED})]
    assert notes([e["output"] for e in events if e["type"] == "output"][:len(KINDS)]) == [(k, True) for k in KINDS]
    assert events[-1]["type"] == "execution" and events[-1]["execution"]["status"] == "completed"
    # The gateway and the sandbox go on.
    assert (await run(alice, sid, "6 * 7"))["result"] == {"text/plain": "42"}
    assert (await alice.get("/health")).status_code == 200


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_a_reply_nested_too_deep_keeps_only_its_plain_fields(provisioner: str, tmp_path: Any) -> None:
    """A reply read (600 levels) keeps the fields of the types Jupyter gives them; one too deep to
    be read at all (100,000) is one never sent: the execution fails after ``idle_grace``."""
    async with gateway_for(provisioner, tmp_path, "--SandboxManager.idle_grace=1") as gateway, \
            gateway.client() as client:
        sid = (await create(client))["id"]
        read = await run(client, sid, CRAFTED_REPLY.replace("REPLY_LEVELS", "600"))
        assert read["status"] == "failed" and read["stdout"] == "ran\n", read
        assert read["error"] == {"code": "exception", "ename": "Crafted", "evalue": "v", "traceback": ["first"]}
        assert read["execution_count"] is None  # (not a number: not kept)
        unread = await run(client, sid, CRAFTED_REPLY.replace("REPLY_LEVELS", "100_000"))
        assert unread["status"] == "failed" and unread["error"]["ename"] == "KernelError", unread
        assert (await run(client, sid, "6 * 7"))["result"] == {"text/plain": "42"}
