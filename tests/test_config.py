"""GATEWAY_* environment variables and their precedence against the command line and config file."""

from __future__ import annotations

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
