"""The browser playground in headless Chromium (Playwright driving Debian's /usr/bin/chromium) against a real
gateway with Docker sandboxes: a plot shows as a decodable PNG, HTML output cannot script the page, the
page works under its Content-Security-Policy."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib.image
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.browsers import CHROMIUM, FLAGS, chromium_or_fail
from tests.gateways import KEYS, GatewayProcess, auth

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('plotted')"
EVIL_HTML = ("from IPython.display import HTML, display\n"
             "display(HTML('<b id=\"inside\">bold</b><script>parent.document.title = \"pwned\"; "
             "top.pwned = 1</script><img src=x onerror=\"top.pwned = 2\">'))")
pytestmark = pytest.mark.docker


@pytest.fixture
async def page(client_gateway: GatewayProcess, tmp_path: Path) -> AsyncIterator[Page]:
    chromium_or_fail()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.problems = []  # type: ignore[attr-defined]
            page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))  # type: ignore[attr-defined]
            page.on("pageerror", lambda e: page.problems.append(str(e)))  # type: ignore[attr-defined]
            yield page
        finally:
            await browser.close()


async def run_cell(page: Page, code: str) -> Any:
    """Type ``code``, press Run, wait for its cell to finish; the cell's locator."""
    before = await page.locator(".cell").count()
    await page.fill("#code", code)
    await page.click("#run")
    await expect(page.locator(".cell")).to_have_count(before + 1)  # (wait_for_function is eval: the CSP refuses it)
    cell = page.locator(".cell").first  # newest first
    await cell.locator(".meta[class*='status-']").wait_for(timeout=90_000)
    return cell


async def test_playground_runs_plots_and_contains_html(page: Page, client_gateway: GatewayProcess,
                                                       tmp_path: Path) -> None:
    response = await page.goto(client_gateway.url + "/")
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "'unsafe-inline'" not in policy

    await page.fill("#key", KEYS["alice"])
    await page.dispatch_event("#key", "change")
    assert await page.evaluate("sessionStorage.getItem('code-gateway-api-key')") == KEYS["alice"]
    await page.click("#new-sandbox")
    await expect(page.locator("#sandbox")).not_to_have_value("", timeout=90_000)
    sandbox_id = await page.input_value("#sandbox")
    try:
        # A plot: an <img> whose data is a PNG that decodes.
        cell = await run_cell(page, PLOT)
        assert "completed" in await cell.locator(".meta").inner_text()
        assert await cell.locator("pre.stdout").inner_text() == "plotted\n"
        src = await cell.locator("img").get_attribute("src")
        assert src is not None and src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert matplotlib.image.imread(io.BytesIO(png), format="png").ndim == 3
        assert await cell.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")

        # HTML output lives in a sandboxed frame and cannot script the page.
        cell = await run_cell(page, EVIL_HTML)
        frame_element = cell.locator("iframe.html-output")
        assert await frame_element.get_attribute("sandbox") == ""
        frame = page.frame_locator(".cell >> nth=0 >> iframe.html-output")
        assert await frame.locator("#inside").inner_text() == "bold"  # it is shown...
        assert await page.evaluate("window.pwned") is None  # ...but its script and handlers never ran
        assert await page.title() == "Code Interpreter Gateway — playground"
        assert await page.locator("#inside").count() == 0  # and it is not in the page's own DOM

        # A DataFrame as a table, a traceback, Markdown and SVG.
        cell = await run_cell(page, "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', None]})")
        assert await cell.locator("table.frame td").all_inner_texts() == ["1", "x", "2", ""]
        cell = await run_cell(page, "1 / 0")
        assert "ZeroDivisionError" in await cell.locator("pre.error").inner_text()
        cell = await run_cell(page, "from IPython.display import Markdown\nMarkdown('# Title\\n\\n**bold** and `code`')")
        assert await cell.locator(".markdown h1").inner_text() == "Title"
        assert await cell.locator(".markdown strong").inner_text() == "bold"
        cell = await run_cell(page, "from IPython.display import SVG\n"
                                    "SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"20\" height=\"20\">"
                                    "<rect width=\"20\" height=\"20\"/></svg>')")
        assert (await cell.locator("img").get_attribute("src") or "").startswith("data:image/svg+xml;base64,")

        # Interrupt a long run.
        await page.fill("#code", "import time\nprint('waiting', flush=True)\ntime.sleep(120)")
        await page.click("#run")
        await page.locator(".cell >> nth=0 >> pre.stdout").wait_for(timeout=90_000)
        await page.click("#interrupt")
        await page.locator(".cell >> nth=0 >> .meta.status-cancelled").wait_for(timeout=90_000)

        # Files: upload, listed, download.
        local = tmp_path / "hello.txt"
        local.write_text("hello from the browser")
        await page.set_input_files("#upload", str(local))
        await page.locator("#files li", has_text="hello.txt").wait_for()
        async with page.expect_download() as downloading:
            await page.locator("#files li", has_text="hello.txt").locator("button").click()
        assert Path(await (await downloading.value).path()).read_text() == "hello from the browser"

        # History and the notebook.
        assert await page.locator("#history li").count() == 7
        async with page.expect_download() as downloading:
            await page.click("#notebook")
        notebook = json.loads(Path(await (await downloading.value).path()).read_text())
        assert notebook["cells"][0]["source"].startswith("import matplotlib")

        await page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").read_bytes().startswith(b"\x89PNG")
        # The browser itself reports that it refused the HTML output's script (and its handler).
        problems: list[str] = page.problems  # type: ignore[attr-defined]
        blocked = [p for p in problems if p.startswith("Blocked script execution in 'about:srcdoc'")]
        assert blocked, problems
        # Nothing else: no script error, no failed load, nothing of the page itself refused by its policy.
        assert [p for p in problems if p not in blocked] == []
    finally:
        async with httpx.AsyncClient(base_url=client_gateway.url, headers=auth("alice")) as rest:
            await rest.delete(f"/api/v1/sandboxes/{sandbox_id}")
