"""The package as a user installs it: ``python -m build`` (sdist, then the wheel from it), the wheel
installed into a fresh venv outside the checkout, and that gateway running real sandboxes.

One test, so one xdist worker builds and installs once per run (tests/conftest.py runs it first,
while the other workers get on with the rest); pip's own cache makes the install cheap after the
first run on a machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import docker_or_fail
from tests.gateways import GatewayProcess, create, run

ROOT = Path(__file__).resolve().parents[1]

#: The kernel's interpreter; whether the startup files ran (10-figures.py takes this variable
#: out of the environment); the startup files in the kernel's own IPython profile.
PROBE = """import os, sys
print(sys.executable)
print("CODE_GATEWAY_FIGURE_FORMATS" in os.environ)
print(*sorted(f for f in os.listdir(get_ipython().profile_dir.startup_dir) if f != "__pycache__"))"""


def shell(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def build_wheel(dist: Path) -> Path:
    """The wheel ``python -m build`` makes from this checkout (built from its sdist)."""
    shell(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=dist)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1 and list(dist.glob("*.tar.gz")), list(dist.iterdir())
    return wheels[0]


def run_time_files() -> set[str]:
    """What a gateway runs from the checkout: every module, and all of ``kernels/`` (``gateway/kernels``
    links to it). (Not, say, the .proto sources of generated modules.)"""
    found = set()
    for directory, dirs, files in os.walk(ROOT / "gateway", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        inside_kernels = Path(directory).is_relative_to(ROOT / "gateway" / "kernels")
        found.update(str((Path(directory) / f).relative_to(ROOT)) for f in files
                     if f.endswith(".py") or (inside_kernels and not f.endswith(".pyc")))
    return found


def install(wheel: Path, venv: Path) -> None:
    """A fresh venv with the wheel and only what it depends on."""
    shell(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    shell(venv / "bin" / "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", wheel,
          cwd=venv)


def shipped_startup_files(venv: Path) -> list[str]:
    startup = next(venv.glob("lib/python*/site-packages/gateway/kernels/ipython/profile_default/startup"))
    return sorted(p.name for p in startup.iterdir() if p.name != "__pycache__")  # (pip compiles the .py files)


def installed_gateway(venv: Path, workdir: Path, provisioner: str) -> GatewayProcess:
    """The installed ``code-gateway``, run from a directory that is not the checkout."""
    gateway = GatewayProcess(workdir / f"data-{provisioner}", provisioner=provisioner,
                             command=[str(venv / "bin" / "code-gateway")], cwd=workdir)
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # nothing may lead back to the checkout
        gateway.env.pop(name, None)
    gateway.env["PATH"] = f"{venv / 'bin'}:{gateway.env.get('PATH', '/usr/bin:/bin')}"
    return gateway


async def runs_code(gateway: GatewayProcess, provisioner: str, venv: Path) -> None:
    await gateway.start()
    try:
        async with gateway.client("alice") as alice:
            sandbox = await create(alice)
            execution = await run(alice, sandbox["id"], PROBE)
            assert execution["status"] == "completed", execution
            executable, unused_formats, startup_files = execution["stdout"].splitlines()
            assert unused_formats == "False", provisioner  # the startup files ran
            if provisioner == "local":
                assert Path(executable).parent.parent == venv  # the installed gateway's interpreter
                assert startup_files.split() == shipped_startup_files(venv)  # a copy of the wheel's profile
            else:
                assert executable.startswith("/usr/"), executable  # the image's python3 (the kernelspec's argv)
            # The file API runs kernels/tools/sandbox_files.py (locally: the one in the installed package).
            url = f"/api/v1/sandboxes/{sandbox['id']}/files/hello.txt"
            written = await alice.put(url, content=b"from a wheel")
            assert written.status_code == 201, written.text
            read = await alice.get(url)
            assert read.status_code == 200 and read.content == b"from a wheel", read.text
        assert await gateway.stop() == 0, "".join(gateway.output)
    finally:
        gateway.kill()


@pytest.mark.docker
async def test_the_built_wheel_installs_and_runs_sandboxes_anywhere(tmp_path: Path) -> None:
    docker_or_fail().close()
    (tmp_path / "dist").mkdir()
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"gateway/py.typed", "gateway/kernels/python3/kernel.json",
            "gateway/kernels/ipython/profile_default/ipython_kernel_config.py",
            "gateway/kernels/tools/sandbox_files.py"} <= names
    missing = run_time_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"

    venv = tmp_path / "venv"
    install(wheel, venv)
    where = shell(venv / "bin" / "python", "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where  # the installed package, not the checkout

    for provisioner in ("local", "docker"):
        await runs_code(installed_gateway(venv, tmp_path, provisioner), provisioner, venv)
