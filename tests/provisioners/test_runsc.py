"""Unit: reading runsc's process table and the Sentry's state directory (the real runsc is exercised
against gVisor sandboxes in tests/e2e/test_gvisor_features.py and test_socket_redirects.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.provisioners.runsc import RunscError, RunscSandbox, SandboxProcess, below, parse_ps, state_root

TABLE = """UID       PID       PPID      C         TTY       STIME     TIME      CMD
1000      1         0         0         ?         14:15     10ms      tini
1000      7         1         0         ?         14:15     1s        python3
1000      9         0         0         ?         14:16     1s        python3
1000      12        9         0         ?         14:16     0s        sleep
1000      13        12        0         ?         14:16     0s        sh
"""


def test_the_process_table_and_what_runs_below_a_process() -> None:
    processes = parse_ps(TABLE)
    assert processes[9] == SandboxProcess(pid=9, ppid=0, uid=1000) and set(processes) == {1, 7, 9, 12, 13}
    assert below(processes, 9) == [9, 12, 13]
    assert below(processes, 13) == [13]
    with pytest.raises(RunscError, match="no process table"):
        parse_ps("failed to load container")
    with pytest.raises(RunscError, match="no process"):
        parse_ps(TABLE + "x y z\n")


def test_the_state_directory_is_the_sentrys_root(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_bytes(b"runsc-sandbox\0--root=/var/run/docker/runtime-runc/moby\0--log=x\0boot\0")
    directory = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert state_root(directory) == "/var/run/docker/runtime-runc/moby"
        (tmp_path / "cmdline").write_bytes(b"runsc-sandbox\0boot\0")
        with pytest.raises(RunscError, match="--root"):
            state_root(directory)
        (tmp_path / "cmdline").unlink()
        with pytest.raises(RunscError, match="gone"):
            state_root(directory)
    finally:
        os.close(directory)


def test_only_a_full_container_id_is_handed_to_runsc() -> None:
    with pytest.raises(ValueError, match="container id"):
        RunscSandbox("--all", "/var/run/x")
    assert RunscSandbox("a" * 64, "/var/run/x").container_id == "a" * 64


async def test_a_missing_runsc_is_a_runsc_error() -> None:
    sandbox = RunscSandbox("a" * 64, "/var/run/x", runsc="/nonexistent/runsc")
    with pytest.raises(RunscError, match="cannot run /nonexistent/runsc"):
        await sandbox.processes()
