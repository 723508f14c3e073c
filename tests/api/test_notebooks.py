"""Notebooks over REST against real kernels: the history as a valid .ipynb, and seed notebooks on create."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import nbformat
import pytest

from tests.provisioned import alice, bob, create, each_gateway, run  # noqa: F401

PLOT = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()"
TABLE = "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})"


def notebook_url(sandbox_id: str) -> str:
    return f"/api/v1/sandboxes/{sandbox_id}/notebook"


def seed_notebook(*sources: str, markdown_first: bool = True) -> dict[str, Any]:
    cells = [nbformat.v4.new_markdown_cell("# Seed")] if markdown_first else []
    cells += [nbformat.v4.new_code_cell(source) for source in sources]
    return json.loads(nbformat.writes(nbformat.v4.new_notebook(cells=cells)))


async def test_history_is_a_valid_notebook_with_outputs(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    codes = [
        "x = 41\nprint('hello')",
        "x + 1",
        PLOT,
        TABLE,
        "from IPython.display import display, HTML\nh = display(HTML('<b>1</b>'), display_id=True)\nh.update(HTML('<b>2</b>'))",
        "1 / 0",
    ]
    executions = [await run(alice, sandbox["id"], code) for code in codes]

    response = await alice.get(notebook_url(sandbox["id"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ipynb+json")
    assert response.headers["content-disposition"] == f'attachment; filename="sandbox-{sandbox["id"]}.ipynb"'
    notebook = nbformat.reads(response.text, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    assert notebook.metadata.kernelspec.language == "python"
    assert notebook.metadata.language_info.name == "python"
    assert notebook.metadata.code_gateway.sandbox_id == sandbox["id"]

    assert len(notebook.cells) == len(codes)
    for cell, code, execution in zip(notebook.cells, codes, executions):
        assert cell.cell_type == "code"
        assert cell.source == code
        assert cell.id == execution["id"]
        assert cell.execution_count == execution["execution_count"]
        assert json.loads(json.dumps(cell.outputs)) == execution["outputs"]
        assert cell.metadata.code_gateway.status == execution["status"]
        assert cell.metadata.execution["shell.execute_reply"] == execution["finished_at"]
    assert [c.execution_count for c in notebook.cells] == list(range(1, len(codes) + 1))
    assert notebook.cells[0].outputs[0] == {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    assert notebook.cells[1].outputs[0]["data"]["text/plain"] == "42"
    png = base64.b64decode(notebook.cells[2].outputs[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "<table" in notebook.cells[3].outputs[0]["data"]["text/html"]
    assert notebook.cells[4].outputs[0]["data"]["text/html"] == "<b>2</b>"  # the update is applied
    assert notebook.cells[5].outputs[-1]["output_type"] == "error"
    assert notebook.cells[5].metadata.code_gateway.status == "failed"


async def test_notebook_of_an_empty_or_ended_sandbox_and_ownership(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    empty = nbformat.reads((await alice.get(notebook_url(sandbox["id"]))).text, as_version=4)
    nbformat.validate(empty)
    assert empty.cells == []
    await run(alice, sandbox["id"], "import time; time.sleep(5)", timeout=0.5)  # ends timed_out
    assert (await alice.delete(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 204
    ended = nbformat.reads((await alice.get(notebook_url(sandbox["id"]))).text, as_version=4)
    nbformat.validate(ended)
    assert [c.metadata.code_gateway.status for c in ended.cells] == ["timed_out"]
    assert ended.cells[0].metadata.code_gateway.error["code"] == "timeout"
    other = await bob.get(notebook_url(sandbox["id"]))
    assert other.status_code == 404 and other.json()["error"]["code"] == "sandbox_not_found"


async def test_seed_notebook_runs_first_and_keeps_state(alice: httpx.AsyncClient) -> None:
    document = seed_notebook("import pandas as pd\nx = 41", "", "df = pd.DataFrame({'v': [x]})\nprint('seeded')")
    document["cells"][2]["source"] = ["y = ", "2\n"]  # sources may also be lists of lines (a blank cell is skipped)
    response = await alice.post("/api/v1/sandboxes", json={"notebook": document})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "running"
    assert created["seed"] == {"status": "completed", "cells": 3, "executed": 3, "failed_cell": None,
                               "execution_id": None, "error": None}
    assert (await run(alice, created["id"], "int(df.v[0]) + y - 1"))["result"]["text/plain"] == "42"
    history = (await alice.get(f"/api/v1/sandboxes/{created['id']}/executions")).json()["executions"]
    assert [e["code"] for e in history][:3] == ["import pandas as pd\nx = 41", "y = 2\n",
                                                "df = pd.DataFrame({'v': [x]})\nprint('seeded')"]
    assert history[2]["stdout"] == "seeded\n"


async def test_seed_stops_at_the_failing_cell_and_says_which(alice: httpx.AsyncClient) -> None:
    document = seed_notebook("a = 1", "b = undefined_name", "c = 3")
    response = await alice.post("/api/v1/sandboxes", json={"notebook": document})
    assert response.status_code == 201, response.text
    created = response.json()
    seed = created["seed"]
    assert seed["status"] == "failed"
    assert seed["failed_cell"] == 2  # index in the notebook's cells: the markdown cell is 0
    assert seed["cells"] == 3 and seed["executed"] == 2
    assert seed["error"]["code"] == "exception" and seed["error"]["ename"] == "NameError"
    assert "undefined_name" in seed["error"]["evalue"]
    # The sandbox stays up with the state the cells before the failure made; later cells did not run.
    assert created["status"] == "running"
    history = (await alice.get(f"/api/v1/sandboxes/{created['id']}/executions")).json()["executions"]
    assert [e["code"] for e in history] == ["a = 1", "b = undefined_name"]
    assert history[1]["id"] == seed["execution_id"]
    assert (await run(alice, created["id"], "a, 'c' in dir()"))["result"]["text/plain"] == "(1, False)"


@pytest.mark.parametrize("notebook, message", [
    ({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}, "only nbformat 4"),
    ({"nbformat": 4, "nbformat_minor": 5, "cells": []}, "'metadata' is a required property"),
    ({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
      "cells": [{"cell_type": "code", "source": 7, "metadata": {}, "outputs": [], "execution_count": None}]},
     "notebook.cells.0.source"),
    ({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "poem", "source": "x"}]},
     "notebook.cells.0"),
])
async def test_invalid_seed_notebooks_are_refused_and_start_nothing(
    alice: httpx.AsyncClient, notebook: dict[str, Any], message: str
) -> None:
    response = await alice.post("/api/v1/sandboxes", json={"notebook": notebook})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_notebook" and message in error["message"], error
    assert (await alice.get("/api/v1/sandboxes")).json()["sandboxes"] == []


async def test_seed_notebook_must_be_an_object(alice: httpx.AsyncClient) -> None:
    response = await alice.post("/api/v1/sandboxes", json={"notebook": "x = 1"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request" and "notebook" in response.json()["error"]["message"]


async def test_exported_history_seeds_a_new_sandbox(alice: httpx.AsyncClient) -> None:
    first = await create(alice)
    for code in ("import math\nr = 2", "area = math.pi * r ** 2", PLOT):
        await run(alice, first["id"], code)
    exported = (await alice.get(notebook_url(first["id"]))).json()
    response = await alice.post("/api/v1/sandboxes", json={"notebook": exported})
    assert response.status_code == 201 and response.json()["seed"]["status"] == "completed"
    second = response.json()["id"]
    assert (await run(alice, second, "round(area, 3)"))["result"]["text/plain"] == "12.566"
