"""A real browser: JupyterLab in headless Chromium runs the quickstart from the Run menu.

JupyterLab serves a copy of notebooks/ (so autosave never touches the committed files) with
``ES_ANALYTICS_LAKE`` pointing at a copy of the sample lake. Playwright drives Debian's ``chromium``
(``.ci/run`` installs it). The test clicks Run → Run All Cells, waits until every code cell has run, checks
that a chart was drawn (an SVG or canvas in an output area) and that no cell shows an error, and saves a
screenshot to ``build/browser-quickstart.png``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from es_analytics import Lake
from es_analytics.notebook import LAKE_ENV
from es_analytics.sample import generate

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "build" / "browser-quickstart.png"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on a copy of the notebooks and a copy of the sample lake: (url, log path)."""
    lake = tmp_path / "lake"
    with Lake.open(lake) as opened:
        generate(opened, events=5_000, seed=7)
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    settings = tmp_path / "lab-settings"
    # Render every cell (no virtual scrolling) and do not ask about news: a quiet, fully drawn page.
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, LAKE_ENV: str(lake), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=60)
        yield f"http://127.0.0.1:{port}/lab/tree/01_quickstart.ipynb?token={token}", log
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_quickstart_runs_in_jupyterlab(jupyterlab: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    url, log = jupyterlab
    SCREENSHOT.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expected = sum(c["cell_type"] == "code" for c in
                           json.loads((ROOT / "notebooks" / "01_quickstart.ipynb").read_text())["cells"])
            page.wait_for_function("(n) => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === n",
                                   arg=expected, timeout=60_000)
            # Wait for the kernel, then Run → Run All Cells from the menu bar.
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.locator(".jp-Notebook .jp-Cell").first.click()  # make the notebook the active widget
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            count = expected
            # Every code cell has an execution number once the run is over ("[*]" while running).
            try:
                page.wait_for_function(
                """(n) => {
                    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
                    return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                arg=count, timeout=120_000,
                )
            finally:
                page.screenshot(path=str(SCREENSHOT), full_page=False)
            outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
            charts = page.locator(".jp-OutputArea-output svg.marks, .jp-OutputArea-output canvas.marks")
            charts.first.wait_for(timeout=30_000)
            charts.first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(SCREENSHOT), full_page=False)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            error_text = [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t]
            assert not error_text, error_text
            assert outputs.count() >= count - 2
            assert charts.count() >= 1
            # The summary card of the lake was displayed from the lake named by ES_ANALYTICS_LAKE.
            assert page.locator(".jp-OutputArea-output", has_text="Event lake").count() >= 1
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000, log.read_text()[-2000:]
