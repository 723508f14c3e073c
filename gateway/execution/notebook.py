"""Notebooks: a sandbox's history as an nbformat v4 notebook, and notebooks that seed a sandbox.

    document = history_notebook(sandbox_id, executions, created_at=...)   # -> .ipynb JSON object
    async for text in history_notebook_text(sandbox_id, stored_executions, created_at=...): ...  # streamed
    cells = seed_cells(body["notebook"])             # [(cell index, code)]; InvalidNotebook if bad
    report = await run_seed(cells, execute)          # runs them in order, stops at the first failure

The history notebook has one code cell per execution, in the order they were submitted: its
code, its stored outputs (already nbformat v4 output objects) and its ``execution_count``. Each
cell's id is the execution's id; its metadata says how the execution ended
(``metadata.code_gateway``) and when it ran (``metadata.execution``, as JupyterLab records it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import textwrap
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nbformat

from gateway import timestamps
from gateway.errors import InvalidNotebook
from gateway.execution.model import Execution, ExecutionStatus

NOTEBOOK_MEDIA_TYPE = "application/x-ipynb+json"

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (sandbox)", "language": "python"}
LANGUAGE_INFO = {
    "name": "python",
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "pygments_lexer": "ipython3",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "nbconvert_exporter": "python",
}


def history_notebook(sandbox_id: str, executions: list[Execution], *,
                     created_at: str | None = None) -> dict[str, Any]:
    """The executions as an nbformat v4.5 notebook (a JSON-ready dict that passes ``nbformat.validate``)."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": dict(KERNELSPEC),
            "language_info": copy.deepcopy(LANGUAGE_INFO),
            "code_gateway": {
                "sandbox_id": sandbox_id,
                "sandbox_created_at": created_at,
                "exported_at": timestamps.to_iso(timestamps.now()),
            },
        },
        "cells": [_cell(execution) for execution in executions],
    }


async def history_notebook_text(sandbox_id: str, executions: AsyncIterator[Execution], *,
                                 created_at: str | None = None) -> AsyncIterator[str]:
    """The same notebook as ``history_notebook``, as JSON text in pieces: the head, then one cell
    at a time (each encoded on a worker thread), so an export of any length never holds the whole
    history nor keeps the event loop encoding it."""
    head = history_notebook(sandbox_id, [], created_at=created_at)
    del head["cells"]
    text = json.dumps(head, indent=1, ensure_ascii=False)
    yield text[: text.rindex("}")].rstrip() + ',\n "cells": ['
    separator = "\n"
    async for execution in executions:
        yield separator + await asyncio.to_thread(_cell_text, execution)
        separator = ",\n"
    yield "\n ]\n}\n"


def _cell_text(execution: Execution) -> str:
    return textwrap.indent(json.dumps(_cell(execution), indent=1, ensure_ascii=False), "  ")


def _cell(execution: Execution) -> dict[str, Any]:
    record: dict[str, Any] = {"execution_id": execution.id, "status": str(execution.status)}
    if execution.truncated:
        record["truncated"] = True
    if execution.error is not None and execution.error.get("code") != "exception":
        # Why the gateway ended it (timeout, kernel death, ...): no kernel output says so.
        record["error"] = {k: execution.error.get(k) for k in ("code", "ename", "evalue")}
    metadata: dict[str, Any] = {"code_gateway": record}
    if execution.started_at is not None and execution.finished_at is not None:
        metadata["execution"] = {
            "iopub.execute_input": timestamps.to_iso(execution.started_at),
            "shell.execute_reply": timestamps.to_iso(execution.finished_at),
        }
    return {
        "id": execution.id,
        "cell_type": "code",
        "metadata": metadata,
        "execution_count": execution.execution_count,
        "source": execution.code,
        "outputs": [_output(o, execution) for o in execution.settled_outputs()],
    }


def _output(output: dict[str, Any], execution: Execution) -> dict[str, Any]:
    if output.get("output_type") == "execute_result" and output.get("execution_count") is None:
        return {**output, "execution_count": execution.execution_count}
    return output


def notebook_filename(sandbox_id: str) -> str:
    return f"sandbox-{sandbox_id}.ipynb"


def integral(value: Any) -> Any:
    """A copy of a JSON value with every float of integral value as an int: JSON does not tell
    ``1.0`` from ``1`` (JSON Schema calls both integers), nbformat's validator does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


def seed_cells(document: Any) -> list[tuple[int, str]]:
    """The code cells of a seed notebook as ``(index in cells, code)``, empty ones left out.

    The notebook must be nbformat 4 and valid (missing cell ids are tolerated); otherwise
    ``InvalidNotebook`` names the problem and where it is. (Whether each cell's code can run is
    the caller's to check, as for any execution's.)
    """
    if not isinstance(document, dict):
        raise InvalidNotebook("field 'notebook' must be an nbformat v4 notebook (a JSON object)")
    if document.get("nbformat") != 4:
        raise InvalidNotebook(
            f"field 'notebook': only nbformat 4 notebooks can seed a sandbox (this one says nbformat "
            f"{document.get('nbformat')!r})"
        )
    document = integral(document)
    minor = document.get("nbformat_minor")
    if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
        raise InvalidNotebook(f"field 'notebook.nbformat_minor' must be an integer of at least 0, got {minor!r}")
    notebook = nbformat.from_dict(document)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns when it adds missing cell ids
            nbformat.validate(notebook)
    except nbformat.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path)
        place = f"notebook.{where}" if where else "notebook"
        raise InvalidNotebook(
            f"field 'notebook' is not a valid nbformat v4 notebook: {place}: {exc.message}"
        ) from None
    except Exception:  # nbformat's validator trips over some malformed notebooks (a cell_type that is an object)
        raise InvalidNotebook("field 'notebook' is not a valid nbformat v4 notebook (its structure is malformed)") \
            from None
    cells = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if not source.strip():
            continue
        cells.append((index, source))
    return cells


async def run_seed(cells: list[tuple[int, str]],
                   execute: Callable[[str], Awaitable[Execution]]) -> dict[str, Any]:
    """Run the seed cells in order, stopping at the first that does not complete.

    Returns the ``seed`` report: ``status`` (``completed`` or ``failed``), ``cells`` (code cells
    to run), ``executed`` (how many ran), and for a failure ``failed_cell`` (its index in the
    notebook's ``cells``), ``execution_id`` and ``error`` (as in the Execution).
    """
    report: dict[str, Any] = {
        "status": "completed", "cells": len(cells), "executed": 0,
        "failed_cell": None, "execution_id": None, "error": None,
    }
    for index, code in cells:
        execution = await execute(code)
        report["executed"] += 1
        if execution.status != ExecutionStatus.COMPLETED:
            report.update(status="failed", failed_cell=index, execution_id=execution.id,
                          error=execution.error)
            break
    return report
