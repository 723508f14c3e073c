"""``code-gateway-client`` as a user runs it: a subprocess against a real gateway with Docker sandboxes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import nbformat
import pytest

from code_gateway_client import Gateway
from tests.gateways import KEYS, GatewayProcess

CLI = str(Path(sys.executable).parent / "code-gateway-client")
pytestmark = pytest.mark.docker


def env_for(gateway: GatewayProcess, user: str = "bob") -> dict[str, str]:
    return {**os.environ, "CODE_GATEWAY_URL": gateway.url, "CODE_GATEWAY_API_KEY": KEYS[user]}


def cli(gateway: GatewayProcess, *args: str, cwd: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env_for(gateway), cwd=cwd, capture_output=True, text=True, timeout=120,
                          **kwargs)


def running_ids(gateway: GatewayProcess) -> set[str]:
    listed = cli(gateway, "sandboxes", "ls", "--status", "running", "--json")
    assert listed.returncode == 0, listed.stderr
    return {s["id"] for s in json.loads(listed.stdout)}


def test_run_saves_images_and_tables_and_cleans_up(client_gateway: GatewayProcess, tmp_path: Path) -> None:
    before = running_ids(client_gateway)
    code = ("import matplotlib.pyplot as plt, pandas as pd\nprint('hello')\nplt.plot([1, 2])\nplt.show()\n"
            "pd.DataFrame({'a': [1, 2]})")
    done = cli(client_gateway, "run", "-c", code, "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello"
    saved = {line.split(":")[0][1:]: Path(line.split(": ", 1)[1].rstrip("]")) for line in lines if "saved:" in line}
    assert saved["image saved"].suffix == ".png"
    assert matplotlib.image.imread(io.BytesIO(saved["image saved"].read_bytes()), format="png").ndim == 3
    assert saved["table saved"].read_text().splitlines() == [",a", "0,1", "1,2"]
    assert running_ids(client_gateway) == before  # the sandbox it made is gone


def test_run_a_file_that_fails_exits_1_with_the_traceback(client_gateway: GatewayProcess, tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("print('before')\n{}['missing']\n")
    done = cli(client_gateway, "run", str(script))
    assert done.returncode == 1
    assert done.stdout == "before\n"
    assert "KeyError" in done.stderr and "'missing'" in done.stderr and "\x1b[" not in done.stderr


def test_run_streams_while_the_code_runs(client_gateway: GatewayProcess) -> None:
    with Gateway(client_gateway.url, KEYS["bob"]) as gateway, gateway.create_sandbox() as sandbox:
        code = ("import os, time\nprint('first', flush=True)\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"
                "print('second')")
        with subprocess.Popen([CLI, "run", "--sandbox", sandbox.id, "-c", code], env=env_for(client_gateway),
                              stdout=subprocess.PIPE, text=True) as process:
            try:
                assert process.stdout is not None
                assert process.stdout.readline() == "first\n"  # printed while the code still waits for 'go'
                sandbox.files.upload("go", b"")
                assert process.stdout.read() == "second\n"
                assert process.wait(60) == 0
            finally:
                process.kill()
        assert sandbox.refresh().status == "running"  # a named sandbox is left as it was


def test_sandboxes_files_and_notebook(client_gateway: GatewayProcess, tmp_path: Path) -> None:
    with Gateway(client_gateway.url, KEYS["bob"]) as gateway:
        sandbox = gateway.create_sandbox(metadata={"from": "cli-test"})
    assert cli(client_gateway, "run", "--sandbox", sandbox.id, "-c", "x = 5").returncode == 0
    listed = cli(client_gateway, "sandboxes", "ls")
    assert any(line.startswith(sandbox.id) and "running" in line and "cli-test" in line
               for line in listed.stdout.splitlines())

    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(3 << 20))
    put = cli(client_gateway, "files", "--progress", "put", sandbox.id, str(local), "in/data.bin")
    assert put.returncode == 0, put.stderr
    assert put.stdout.strip() == f"in/data.bin {3 << 20}"
    assert "100%" in put.stderr and "put in/data.bin [" in put.stderr
    ls = cli(client_gateway, "files", "ls", sandbox.id, "in")
    assert ls.stdout.split()[0] == "f" and ls.stdout.split()[1] == str(3 << 20) and "in/data.bin" in ls.stdout
    got = cli(client_gateway, "files", "--progress", "get", sandbox.id, "in/data.bin", str(tmp_path / "back.bin"))
    assert got.returncode == 0 and "100%" in got.stderr
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    to_stdout = subprocess.run([CLI, "files", "get", sandbox.id, "in/data.bin", "-"], env=env_for(client_gateway),
                               capture_output=True, timeout=120)
    assert to_stdout.stdout == local.read_bytes() and to_stdout.stderr == b""

    exported = cli(client_gateway, "notebook", sandbox.id)
    notebook = nbformat.reads(exported.stdout, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].source == "x = 5"

    assert cli(client_gateway, "sandboxes", "rm", sandbox.id).stdout.strip() == sandbox.id
    assert sandbox.id not in running_ids(client_gateway)
    gone = cli(client_gateway, "files", "ls", sandbox.id)
    assert gone.returncode == 1 and "409 sandbox_not_running" in gone.stderr


def test_flags_override_the_environment_and_errors_name_the_code(client_gateway: GatewayProcess) -> None:
    done = subprocess.run([CLI, "--api-key", "not-a-key", "sandboxes", "ls"], env=env_for(client_gateway),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "401 unauthorized" in done.stderr
    missing = cli(client_gateway, "notebook", "0000dead")
    assert missing.returncode == 1 and "404 sandbox_not_found" in missing.stderr
    elsewhere = subprocess.run([CLI, "--url", client_gateway.url, "sandboxes", "ls"],
                               env={**os.environ, "CODE_GATEWAY_URL": "http://127.0.0.1:9", "CODE_GATEWAY_API_KEY":
                                    KEYS["bob"]}, capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode == 0, elsewhere.stderr
