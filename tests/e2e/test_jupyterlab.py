"""JupyterLab (stock, `jupyter lab --gateway-url`) in headless Chromium, its kernels Docker sandboxes of
our gateway: what a notebook user sees must be what a local kernel gives.

One gateway, one JupyterLab server and one Chromium for the module; each test opens its own
notebook (a fresh kernel) in a fresh browser context (no cookies, no storage).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from playwright.async_api import Page, async_playwright

from tests.browsers import SharedChromium
from tests.conftest import docker_or_fail, failed
from tests.gateways import GatewayProcess
from tests.jupyter_clients import JupyterProcess

pytestmark = pytest.mark.docker

TOKEN = "lab-test-token"
KERNEL = "Python 3 (sandbox)"
#: Seconds JupyterLab may take to show a kernel's death (the issue's bound).
DEATH_NOTICE = 10


class Lab:
    def __init__(self, url: str, root: Path, chromium: SharedChromium, gateway: GatewayProcess,
                 server: JupyterProcess) -> None:
        self.url = url
        self.root = root
        self.chromium = chromium
        self.gateway = gateway
        self.server = server

    def log_tails(self, lines: int = 300) -> str:
        """The last lines of the gateway's and JupyterLab's logs (a failed test's explanation)."""
        lab = self.server.log.read_text(errors="replace").splitlines()[-lines:]
        return "".join(["--- gateway\n", *self.gateway.output[-lines:],
                        "--- jupyterlab\n", *(f"{line}\n" for line in lab)])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: Any) -> Iterator[Lab]:
    docker_or_fail().close()
    base = tmp_path_factory.mktemp("jupyterlab")
    gateway = GatewayProcess(base / "data", provisioner="docker")
    asyncio.run(gateway.start())
    root = base / "root"
    root.mkdir()
    server = JupyterProcess("jupyterlab", gateway.url, root=root, token=TOKEN,
                            args=("--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"))
    # No "news" and no update check: nothing leaves loopback, no toast covers the notebook.
    notification = server.settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    chromium = SharedChromium(base / "chromium")
    try:
        chromium.start()
        asyncio.run(server.wait_up())
        yield Lab(server.url, root, chromium, gateway, server)
    finally:
        chromium.stop()
        server.stop()
        asyncio.run(gateway.stop())


@pytest.fixture
async def page(lab: Lab, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A page of the module's Chromium in a context of its own, as a new visitor of JupyterLab.
    (A failed test's report shows the tails of the gateway's and JupyterLab's logs.)"""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(lab.chromium.endpoint)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            yield await context.new_page()
        finally:
            await context.close()
            if failed(request):
                print(lab.log_tails())


async def open_notebook(page: Page, lab: Lab, name: str, cells: list[str]) -> None:
    """Write a notebook of ``cells``, open it, and wait until its (sandbox) kernel is idle."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": KERNEL, "language": "python"}
    nbformat.write(notebook, lab.root / name)
    # (reset: no tabs of earlier tests restored from the saved workspace)
    await page.goto(f"{lab.url}/lab/tree/{name}?token={TOKEN}&reset")
    await notebook_panel(page).locator(".jp-Cell").first.wait_for(timeout=120_000)
    await kernel_status(page, "idle", within=120)


async def kernel_status(page: Page, wanted: str, *, within: float) -> None:
    """Wait until the notebook's kernel is ``wanted`` (idle, busy, ...): its indicator and the status bar.

    (The indicator alone says idle while the kernel is still being started.)
    """
    indicator = notebook_panel(page).locator(".jp-Notebook-ExecutionIndicator")
    status_bar = page.locator(".jp-StatusBar-TextItem", has_text=f"{KERNEL} |")
    seen: tuple[str | None, str] = (None, "")
    try:
        async with asyncio.timeout(within):
            while seen != (wanted, f"{KERNEL.lower()} | {wanted}"):
                seen = (await indicator.get_attribute("data-status"),
                        (await status_bar.all_inner_texts() or [""])[0].lower())
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the kernel is not {wanted} after {within:g} s (indicator, status bar): {seen}") from None


def notebook_panel(page: Page) -> Any:
    """The notebook on show."""
    return page.locator(".jp-NotebookPanel:visible")


async def run_cell(page: Page, index: int) -> None:
    """Put the cursor in cell ``index`` and run it as a user does (Shift+Enter)."""
    await notebook_panel(page).locator(".jp-Cell").nth(index).locator(".jp-InputArea-editor").click()
    await page.keyboard.press("Shift+Enter")


def output_of(page: Page, index: int) -> Any:
    return notebook_panel(page).locator(".jp-Cell").nth(index).locator(".jp-OutputArea-output")


async def test_a_dataframe_is_a_table_and_a_plot_an_image(page: Page, lab: Lab) -> None:
    await open_notebook(page, lab, "rich.ipynb", [
        "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3.5, 19.0]})",
        "pd.Series([1, 2], name='n')",
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    ])
    for index in range(3):
        await run_cell(page, index)
    table = output_of(page, 0).locator("table")
    await table.wait_for(timeout=60_000)
    assert await table.locator("th").all_inner_texts() == ["", "city", "temp", "0", "1"]
    assert "Oslo" in await table.inner_text()
    assert await output_of(page, 0).locator(".jp-RenderedJSON, .jp-JSONViewer").count() == 0  # not a JSON tree
    series = output_of(page, 1)
    await series.locator("pre").wait_for(timeout=60_000)  # a Series is text, as with a local kernel
    assert "Name: n, dtype: int64" in await series.inner_text()
    image = output_of(page, 2).locator("img")
    await image.wait_for(timeout=60_000)
    assert (await image.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert await image.evaluate("img => img.naturalWidth") > 300


async def test_a_dying_kernel_shows_the_restarting_dialog_and_the_notebook_goes_on(page: Page, lab: Lab) -> None:
    await open_notebook(page, lab, "death.ipynb", ["x = 1", "import os\nos._exit(1)", "print('x' in globals())"])
    await run_cell(page, 0)
    await kernel_status(page, "idle", within=60)
    await run_cell(page, 1)
    # JupyterLab's own notice, as for a local kernel (its title is read once it is drawn: the
    # dialog's text can be read a moment before its header is, on a busy machine).
    dialog = page.locator(".jp-Dialog").filter(has_text="Kernel Restarting")
    await dialog.wait_for(timeout=DEATH_NOTICE * 1000)
    assert "appears to have died" in await dialog.inner_text()
    await dialog.locator("button.jp-mod-accept").click()
    # The gateway restarted the kernel at once, as Jupyter Server does, and JupyterLab is connected
    # to the new one: the next cell runs there (the old kernel's state is gone).
    await run_cell(page, 2)
    await output_of(page, 2).filter(has_text="False").wait_for(timeout=120_000)
    await kernel_status(page, "idle", within=60)
    # A reload finds the same kernel, and reaches it.
    await page.keyboard.press("Control+s")  # (saved: no "leave the page?" question)
    await page.locator(".jp-mod-current.jp-mod-dirty").wait_for(state="detached", timeout=30_000)
    await page.reload()
    await notebook_panel(page).locator(".jp-Cell").first.wait_for(timeout=120_000)
    await kernel_status(page, "idle", within=120)
    await run_cell(page, 0)
    await run_cell(page, 2)
    await output_of(page, 2).filter(has_text="True").wait_for(timeout=60_000)
    async with httpx.AsyncClient(base_url=lab.url, params={"token": TOKEN}) as client:
        sessions = (await client.get("/api/sessions")).json()
    assert [s["kernel"]["execution_state"] for s in sessions if s["path"] == "death.ipynb"] == ["idle"]


async def test_interrupt_and_restart_from_the_toolbar(page: Page, lab: Lab) -> None:
    await open_notebook(page, lab, "control.ipynb", ["y = 2", "import time\ntime.sleep(120)", "'y' in globals()"])
    await run_cell(page, 0)
    await run_cell(page, 1)
    await kernel_status(page, "busy", within=60)
    await notebook_panel(page).locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    await output_of(page, 1).filter(has_text="KeyboardInterrupt").wait_for(timeout=30_000)
    await kernel_status(page, "idle", within=30)
    await run_cell(page, 2)
    await output_of(page, 2).wait_for(timeout=60_000)
    assert (await output_of(page, 2).inner_text()).strip() == "True"  # interrupting kept the state

    await notebook_panel(page).locator("jp-button[data-command='notebook:restart-kernel']").click()
    confirm = page.locator(".jp-Dialog")
    await confirm.wait_for(timeout=30_000)
    await confirm.locator("button.jp-mod-accept").click()
    await page.locator(".jp-Dialog").wait_for(state="detached", timeout=30_000)
    await kernel_status(page, "idle", within=60)
    await run_cell(page, 2)
    await output_of(page, 2).filter(has_text="False").wait_for(timeout=60_000)  # the restart cleared it
