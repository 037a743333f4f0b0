"""A real browser: every notebook in JupyterLab (headless Chromium), saved, reloaded, untrusted, and exported.

JupyterLab serves a copy of notebooks/ (so autosave never touches the committed files) with
``ES_ANALYTICS_LAKE`` pointing at a sample lake made for the test (each notebook works on a private copy of
it). Playwright drives Debian's ``chromium`` (``.ci/run`` installs it). For each notebook the test

1. clicks Run → Run All Cells, waits until every code cell has run, and asserts that every chart output (an
   ``application/vnd.vega.v5+json`` output, as many as nbclient's run of the same notebook has) shows a
   rendered chart (an SVG with marks), that no cell shows an error, and that the browser console has no error;
2. saves, reloads the page and asserts the charts are drawn again, without running anything;
3. opens the copy executed by nbclient (not signed by this server, so untrusted) and asserts the same;
4. exports that copy to HTML with nbconvert and asserts every chart is there as a drawn SVG.

The nbclient runs happen on a thread while the browser works on the notebooks before. A screenshot of the
quickstart goes to ``build/browser-quickstart.png``.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

from es_analytics import Lake
from es_analytics.notebook import LAKE_ENV
from es_analytics.sample import generate

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "build" / "browser-quickstart.png"
VEGA = "application/vnd.vega.v5+json"

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# The marks of every rendered Vega chart in the page: one number per chart output (0 = drawn empty).
CHART_MARKS_JS = """() => [...document.querySelectorAll(
    ".jp-OutputArea-output[data-mime-type='application/vnd.vega.v5+json']")].map(
    out => out.querySelectorAll("svg.marks g[class*='role-mark'] > *").length)"""
# The same for an HTML export, where each chart is the static SVG of its output.
EXPORT_MARKS_JS = """() => [...document.querySelectorAll(".jp-OutputArea-output svg.marks")].map(
    svg => svg.querySelectorAll("g[class*='role-mark'] > *").length)"""
ALL_RUN_JS = """(n) => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    return prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""


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


@dataclass
class Lab:
    base: str
    token: str
    root: Path
    log: Path
    executed: dict[str, Future[nbformat.NotebookNode]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?token={self.token}"

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.base}{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def execute(source: Path, target: Path, cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook with nbclient, as CI does, and save it where JupyterLab serves it (unsigned)."""
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    nbformat.write(nb, target)
    return nb


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on a copy of the notebooks and a sample lake, and nbclient runs of every notebook."""
    tmp = tmp_path_factory.mktemp("browser")
    lake = tmp / "lake"
    with Lake.open(lake) as opened:
        generate(opened, events=5_000, seed=7)
    root = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    settings = tmp / "lab-settings"
    # Render every cell (no virtual scrolling) and do not ask about news: a quiet, fully drawn page.
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, LAKE_ENV: str(lake), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp / "rt")}
    port, token = free_port(), secrets.token_hex(16)
    log = tmp / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
        )
    pool = ThreadPoolExecutor(max_workers=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LAKE_ENV, str(lake))  # the nbclient kernels inherit it
        try:
            wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=60)
            running = Lab(f"http://127.0.0.1:{port}", token, root, log)
            for notebook in NOTEBOOKS:
                running.executed[notebook.name] = pool.submit(execute, notebook, root / f"executed-{notebook.name}",
                                                              root)
            yield running
        finally:
            pool.shutdown(cancel_futures=True)
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def chart_outputs(nb: nbformat.NotebookNode) -> int:
    return sum(VEGA in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def wait_for_charts(page: Any, expected: int, script: str = CHART_MARKS_JS) -> list[int]:
    """Wait until ``expected`` charts are drawn with marks; the marks per chart."""
    try:
        page.wait_for_function(f"() => {{ const m = ({script})(); return m.length === {expected} && "
                               "m.every(n => n > 0); }", timeout=30_000)
    except Exception:  # the assertion below says what is missing
        pass
    marks: list[int] = page.evaluate(script)
    return marks


def open_notebook(page: Any, url: str, cells: int) -> None:
    page.goto(url)
    page.wait_for_function("(n) => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === n",
                           arg=cells, timeout=60_000)


def cell_errors(page: Any) -> list[str]:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    return [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_jupyterlab(lab: Lab, notebook: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    cells = sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text())["cells"])
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))

            # 1. Run → Run All Cells.
            open_notebook(page, lab.url(notebook.name), cells)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.locator(".jp-Notebook .jp-Cell").first.click()  # make the notebook the active widget
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            page.wait_for_function(ALL_RUN_JS, arg=cells, timeout=150_000)
            executed = lab.executed[notebook.name].result(timeout=240)
            expected = chart_outputs(executed)
            marks = wait_for_charts(page, expected)
            if notebook.name == "01_quickstart.ipynb":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.vega.v5+json']").last \
                    .scroll_into_view_if_needed()
                page.screenshot(path=str(SCREENSHOT))
            assert len(marks) == expected and all(marks), f"after run: {marks}, expected {expected} charts"
            assert not cell_errors(page)
            assert not console, console

            # 2. Save, reload, and the charts are there without running anything.
            page.keyboard.press("Control+s")
            page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
            saved = nbformat.read(lab.root / notebook.name, as_version=4)
            assert chart_outputs(saved) == expected
            page.reload()
            open_notebook(page, lab.url(notebook.name), cells)
            marks = wait_for_charts(page, expected)
            assert len(marks) == expected and all(marks), f"after reload: {marks}, expected {expected} charts"
            assert not console, console

            # 3. The copy nbclient executed: not signed by this server, so untrusted.
            lab.shut_down_kernels()
            open_notebook(page, lab.url(f"executed-{notebook.name}"), cells)
            page.wait_for_selector(".jp-Notebook", timeout=30_000)
            marks = wait_for_charts(page, expected)
            assert len(marks) == expected and all(marks), f"untrusted copy: {marks}, expected {expected} charts"
            assert not console, console
            lab.shut_down_kernels()

            # 4. The HTML export of that copy: every chart as a drawn SVG.
            subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--output-dir", str(tmp_path),
                            str(lab.root / f"executed-{notebook.name}")], check=True, capture_output=True)
            exported = tmp_path / f"executed-{notebook.stem}.html"
            html = exported.read_text(encoding="utf-8")
            assert "vegaEmbed" not in html and "cdn.jsdelivr.net/npm/vega" not in html
            page.goto(exported.as_uri())
            marks = wait_for_charts(page, expected, EXPORT_MARKS_JS)
            assert len(marks) == expected and all(marks), f"HTML export: {marks}, expected {expected} charts"
        finally:
            browser.close()
    assert expected > 0 or notebook.name not in {"01_quickstart.ipynb", "04_patterns.ipynb"}, lab.log.read_text()[-2000:]
