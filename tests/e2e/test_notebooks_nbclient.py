"""Notebooks run with nbclient through the gateway give, cell by cell, what a local kernel gives.

Each notebook of ``tests/data/notebooks`` (NumPy, pandas, matplotlib, rich display with updates
by display id and ``clear_output``; errors included) runs twice, as a user would run it:
- through the gateway, with jupyter_server's gateway kernel classes and the client class README
  shows (every kernel a Docker sandbox);
- in a local kernel of the same image (``tests.image_kernels``: the image's own ipykernel and
  libraries, without the gateway's startup files).
Their outputs must be the same once what legitimately differs is set aside: memory addresses in
reprs, the kernel's process id in warning paths, the machine-readable table our sandboxes
add to DataFrames (a vendor MIME type front ends ignore), and where a kernel cut its stream text
into messages (``print`` writes its text and its newline apart, and ipykernel's output thread
may flush between them on a busy machine: nbclient keeps each message as an output, a front end
shows them joined). PNG images are compared by size.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from gateway.provisioners.docker import default_image
from tests.conftest import docker_or_fail
from tests.gateways import KEYS, GatewayProcess
from tests.image_kernels import image_kernel
from tests.jupyter_clients import AuthGatewayKernelClient, GatewayKernels, gateway_client
from tests.pngs import png_size

pytestmark = pytest.mark.docker

NOTEBOOKS = sorted((Path(__file__).parents[1] / "data" / "notebooks").glob("*.ipynb"))
#: Our DataFrames' and Series' extra MIME type (kernels/ipython/profile_default/startup/20-tables.py).
TABLE = "application/vnd.code-gateway.table+json"
CELL_TIMEOUT = 120
ADDRESS = re.compile(r"\b0x[0-9a-f]{6,}\b")
KERNEL_TEMP = re.compile(r"/tmp/ipykernel_\d+/")
#: What each notebook's outputs must show (so that a comparison of two empty notebooks cannot pass).
SHOWS = {
    "numpy": ["operands could not be broadcast", "RuntimeWarning: divide by zero", "[0.  , 0.17"],
    "pandas": ["<table", "memory usage", "image/png", "mean_temp"],
    "matplotlib": ["image/png", "two figures follow"],
    "display": ["<u>third</u>", "step 2", "to stderr", "ZeroDivisionError", "after the error", "text/markdown"],
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    docker_or_fail().close()
    running = GatewayProcess(tmp_path_factory.mktemp("nbclient") / "data", provisioner="docker")
    asyncio.run(running.start())
    try:
        yield running
    finally:
        asyncio.run(running.stop())


def text(value: Any) -> Any:
    if isinstance(value, list):
        return [text(item) for item in value]
    if isinstance(value, str):
        return KERNEL_TEMP.sub("/tmp/ipykernel_N/", ADDRESS.sub("0x…", value))
    return value


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    """An output with what legitimately differs between two kernels set aside."""
    output = copy.deepcopy(dict(output))
    data = output.get("data")
    if isinstance(data, dict):
        data.pop(TABLE, None)
        for mime in list(data):
            data[mime] = ("png", *png_size(data[mime])) if mime == "image/png" else text(data[mime])
    for field in ("text", "traceback", "evalue"):
        if field in output:
            output[field] = text(output[field])
    return output


def joined(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs with consecutive stream text of one stream joined, as a front end shows it."""
    result: list[dict[str, Any]] = []
    for output in outputs:
        last = result[-1] if result else None
        if (last is not None and output.get("output_type") == "stream" == last.get("output_type")
                and output.get("name") == last.get("name")):
            result[-1] = {**last, "text": last["text"] + output["text"]}
        else:
            result.append(output)
    return result


def cells_of(notebook: Any) -> list[tuple[str, int | None, list[dict[str, Any]]]]:
    return [(cell.source, cell.execution_count, joined([comparable(o) for o in cell.outputs]))
            for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
async def test_a_notebook_gives_what_a_local_kernel_gives(path: Path, gateway: GatewayProcess) -> None:
    local, ours = nbformat.read(path, as_version=4), nbformat.read(path, as_version=4)

    async def in_a_local_kernel() -> None:
        async with image_kernel(default_image()) as km:
            await NotebookClient(local, km=km, timeout=CELL_TIMEOUT).async_execute()

    with gateway_client(gateway.url, KEYS["alice"]):
        gateway_km = GatewayKernels(kernel_name="python3", client_factory=AuthGatewayKernelClient)
        await asyncio.gather(in_a_local_kernel(),  # (side by side: the two kernels start in parallel)
                             NotebookClient(ours, km=gateway_km, timeout=CELL_TIMEOUT).async_execute())

    expected, got = cells_of(local), cells_of(ours)
    assert all(count is not None for _, count, _ in got), "every code cell ran"
    shown = json.dumps([cell.get("outputs", []) for cell in ours.cells])
    assert [what for what in SHOWS[path.stem] if what not in shown] == []
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"{path.name}, code cell {index} ({want[0][:60]!r}): gateway != local kernel"
    # What was set aside was there: our table beside every DataFrame's HTML, only through the gateway.
    tables = [o for cell in ours.cells for o in cell.get("outputs", []) if TABLE in o.get("data", {})]
    assert bool(tables) == (path.stem == "pandas")
    assert not [o for cell in local.cells for o in cell.get("outputs", []) if TABLE in o.get("data", {})]
