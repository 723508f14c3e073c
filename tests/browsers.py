"""Headless Chromium for browser tests: Debian's ``/usr/bin/chromium`` (``deploy/host/ensure-browser.sh``),
driven by Playwright, which cannot download a browser of its own here.

    async with async_playwright() as playwright:            # one browser per test
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

    chromium = SharedChromium(tmp_dir); chromium.start()    # one browser per module, a context per test
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(chromium.endpoint)
        context = await browser.new_context()                # fresh cookies and storage
    chromium.stop()
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_or_fail() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash deploy/host/ensure-browser.sh` (make test does)", pytrace=False)


class SharedChromium:
    """One Chromium process on a loopback DevTools port, for every test of a module to connect to."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60) -> None:
        chromium_or_fail()
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        found = threading.Event()
        lines: list[str] = []

        def read() -> None:  # (and keep draining: Chromium must never block on a full pipe)
            assert self.process is not None and self.process.stderr is not None
            with self.process.stderr:  # (closed at its end, or a ResourceWarning fails whichever test runs then)
                for line in self.process.stderr:
                    match = re.search(r"DevTools listening on (ws://\S+)", line)
                    if match and not found.is_set():
                        self.endpoint = match.group(1)
                        found.set()
                    elif not found.is_set():
                        lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout):
            self.stop()
            raise AssertionError(f"Chromium gave no DevTools endpoint in {timeout:g} s:\n{''.join(lines)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
