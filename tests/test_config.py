"""GATEWAY_* environment variables and their precedence against the command line and config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.app import GatewayApp


def make_app(monkeypatch: Any, env: dict[str, str], argv: list[str]) -> GatewayApp:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = GatewayApp()
    app.initialize(argv)
    return app


def test_flags_map_to_environment_variables(monkeypatch: Any) -> None:
    app = make_app(monkeypatch, {"GATEWAY_PORT": "9123", "GATEWAY_PROVISIONER": "local",
                                 "GATEWAY_MAX_CPU": "4"}, [])
    assert app.port == 9123
    assert app.config.KernelLauncher.provisioner == "local"
    assert app.config.ResourcePolicy.max_cpu == 4.0


def test_class_trait_variables(monkeypatch: Any) -> None:
    app = make_app(monkeypatch, {"GATEWAY_SANDBOXMANAGER__INTERRUPT_GRACE": "3.5"}, [])
    assert app.config.SandboxManager.interrupt_grace == 3.5


def test_command_line_beats_environment_beats_config_file(monkeypatch: Any, tmp_path: Any) -> None:
    config = tmp_path / "gateway_config.py"
    config.write_text("c.GatewayApp.port = 7000\nc.GatewayApp.ip = '127.0.0.2'\nc.GatewayApp.data_dir = 'from-file'\n")
    app = make_app(monkeypatch, {"GATEWAY_PORT": "8000", "GATEWAY_IP": "127.0.0.3"},
                   [f"--config={config}", "--port=9000"])
    assert app.port == 9000
    assert app.ip == "127.0.0.3"
    assert app.data_dir == "from-file"


def test_unknown_class_variable_is_an_error(monkeypatch: Any) -> None:
    with pytest.raises(SystemExit):
        make_app(monkeypatch, {"GATEWAY_NOSUCHTHING__X": "1"}, [])


def test_a_runtime_dir_too_long_for_unix_sockets_is_refused_at_start(tmp_path: Any) -> None:
    """Past ~58 bytes a local kernel could not bind its sockets: say so at start, not "kernel died" later."""
    too_long = str(tmp_path / ("x" * 80))
    finished = subprocess.run([sys.executable, "-m", "gateway", f"--runtime-dir={too_long}", "--port=0",
                               f"--data-dir={tmp_path / 'data'}"], capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0
    assert "--runtime-dir" in finished.stderr and "too long for the kernels' unix sockets" in finished.stderr
    assert not Path(too_long).exists()
