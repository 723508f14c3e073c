"""Unit: reading runsc's process table and the Sentry's state directory (the real runsc is exercised
against gVisor sandboxes in tests/e2e/test_gvisor_features.py and test_socket_redirects.py)."""

from __future__ import annotations

import os
import signal
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


class ScriptedRunsc(RunscSandbox):
    """runsc answering ``ps`` from a script of tables (one per listing) and recording each ``kill``."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__("a" * 64, "/var/run/x")
        self.tables = tables
        self.kills: list[tuple[int, int]] = []

    async def _run(self, *args: str) -> str:
        if args[0] == "ps":
            return self.tables.pop(0) if len(self.tables) > 1 else self.tables[0]
        assert args[0] == "kill" and args[1].startswith("--pid=") and args[2] == self.container_id
        self.kills.append((int(args[1].removeprefix("--pid=")), int(args[3])))
        return ""


async def test_a_tree_is_stopped_whole_then_killed_even_what_it_forked_meanwhile() -> None:
    """Killed one by one, a shell whose child died first could run its next step: every process
    is stopped first (the tree listed again: 14 was forked after the first listing), then killed."""
    runsc = ScriptedRunsc([TABLE, TABLE + "1000      14        13        0         ?         14:16     0s        sleep\n"])
    await runsc.kill_tree(9)
    stops = [pid for pid, signum in runsc.kills if signum == signal.SIGSTOP]
    kills = [pid for pid, signum in runsc.kills if signum == signal.SIGKILL]
    assert sorted(stops) == sorted(kills) == [9, 12, 13, 14]
    assert runsc.kills.index((14, signal.SIGSTOP)) < min(runsc.kills.index((pid, signal.SIGKILL)) for pid in kills)
    assert all(signum == signal.SIGSTOP for _, signum in runsc.kills[:4])  # (nothing outside the tree: not 1, 7)


async def test_other_signals_reach_the_tree_deepest_first_and_a_gone_process_nothing() -> None:
    runsc = ScriptedRunsc([TABLE])
    await runsc.signal_tree(9, signal.SIGTERM)
    assert runsc.kills == [(13, signal.SIGTERM), (12, signal.SIGTERM), (9, signal.SIGTERM)]
    runsc.kills.clear()
    await runsc.kill_tree(42)
    await runsc.signal_tree(42, signal.SIGTERM)
    assert runsc.kills == []
