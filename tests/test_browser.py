"""A real browser: every notebook in JupyterLab (headless Chromium), saved, reloaded, untrusted, and exported.

JupyterLab serves a copy of notebooks/ (so autosave never touches the committed files) with
``ES_ANALYTICS_LAKE`` pointing at a sample lake made for the test (each notebook works on a private copy of
it). Playwright drives Debian's ``chromium`` (``.ci/run`` installs it). For each notebook the test

1. clicks Run → Run All Cells, waits until every code cell has run, and asserts that every chart output (an
   ``application/vnd.vega.v5+json`` output, as many as nbclient's run of the same notebook has) shows a
   chart drawn by JupyterLab's Vega extension (an SVG with marks), that no cell shows an error, and that the browser console has no error;
2. saves, reloads the page and asserts the charts are drawn again, without running anything;
3. opens the copy executed by nbclient (not signed by this server, so untrusted) and asserts the same;
4. exports that copy to HTML with nbconvert and asserts every chart is there as a drawn SVG image.

In the time-travel notebook it also drags the "as of" slider of ``lake.explore`` to its first moment and
checks that the widget then shows the states the lake has as of that moment.

nbclient runs the notebooks in a process of its own while the browser works on the notebooks before. A screenshot of the
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
from dataclasses import dataclass
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
SHOWCASES = {"01_quickstart.ipynb", "02_time_travel.ipynb", "03_projections_and_sql.ipynb", "04_patterns.ipynb"}

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# The marks of every rendered Vega chart in the page: one number per chart output (0 = drawn empty); charts
# that a widget draws (lake.explore) live only while the kernel does and are checked on their own.
# (JupyterLab's Vega extension marks its outputs with the class jp-RenderedVega5.)
CHART_MARKS_JS = """() => [...document.querySelectorAll(
    ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output.jp-RenderedVega5")].filter(
    out => !out.closest(".jupyter-widgets")).map(
    out => out.querySelectorAll("svg.marks g[class*='role-mark'] > *").length)"""
# The same for an HTML export, where nbconvert shows each chart's static SVG as an <img> of a data URL: the
# marks in the SVG of each image the browser decoded and drew (0 when it drew nothing).
EXPORT_MARKS_JS = """() => [...document.querySelectorAll(
    ".jp-OutputArea-output[data-mime-type='image/svg+xml'] img")].map(img => {
    if (!img.complete || img.naturalWidth === 0) return 0;
    const svg = new DOMParser().parseFromString(atob(img.src.split(",")[1]), "image/svg+xml");
    return svg.querySelectorAll("svg.marks g[class*='role-mark'] > *").length;
})"""
# Only the notebook on show counts (".lm-mod-hidden" are the other tabs).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
ALL_RUN_JS = """(n) => {
    const prompts = [...document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell .jp-InputPrompt')];
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
    runner: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?reset&token={self.token}"  # reset: no tabs of earlier tests

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.base}{path}?token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def executed(self, name: str, timeout: float = 240) -> nbformat.NotebookNode:
        """The notebook as nbclient ran it, once the runner has saved it."""
        target = self.root / f"executed-{name}"
        deadline = time.monotonic() + timeout
        while not target.exists():
            assert self.runner is not None and self.runner.poll() in (None, 0), "the nbclient run failed"
            assert time.monotonic() < deadline, f"nbclient did not finish {name}"
            time.sleep(0.5)
        return nbformat.read(target, as_version=4)

    def shut_down_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


# Runs each notebook given with nbclient, as CI does, and saves it beside it as executed-NAME (unsigned, so
# JupyterLab opens it untrusted); in a process of its own, beside the browser.
EXECUTE = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
for name in sys.argv[1:]:
    source = Path(name)
    nb = nbformat.read(source, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}).execute()
    partial = source.with_name("partial-" + source.name)
    nbformat.write(nb, partial)
    partial.rename(source.with_name("executed-" + source.name))
"""


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
    runner = subprocess.Popen([sys.executable, "-c", EXECUTE, *(str(root / p.name) for p in NOTEBOOKS)],
                              env={**os.environ, LAKE_ENV: str(lake)}, cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=60)
        yield Lab(f"http://127.0.0.1:{port}", token, root, log, runner)
    finally:
        for process in (runner, server):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
    wait_for_cells(page, cells)


def wait_for_cells(page: Any, cells: int) -> None:
    page.wait_for_function("([s, n]) => document.querySelectorAll(s + ' .jp-CodeCell').length === n",
                           arg=[NOTEBOOK, cells], timeout=60_000)


def cell_errors(page: Any) -> list[str]:
    errors = page.locator(f"{NOTEBOOK} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    return [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t]


def pick_an_event_type(page: Any) -> None:
    """In the mix chart, a click on an event type of the legend fades the bars of the other types."""
    mix = page.locator(f"{NOTEBOOK} .jp-OutputArea-output.jp-RenderedVega5", has_text="Event-type mix over time")
    bars = mix.locator("g.role-mark path")
    faded = "(paths) => paths.filter(p => p.getAttribute('opacity') === '0.25').length"
    assert bars.count() > 4 and bars.evaluate_all(faded) == 0
    mix.locator("g.role-legend-symbol path").first.click()
    page.wait_for_function(f"() => [...document.querySelectorAll('{NOTEBOOK} .jp-RenderedVega5 g.role-mark path')]"
                           ".some(p => p.getAttribute('opacity') === '0.25')", timeout=10_000)
    assert 0 < bars.evaluate_all(faded) < bars.count()


def move_the_time_slider(page: Any, lake: Path) -> None:
    """In lake.explore's widget, dragging "as of" to its first moment shows the states of that moment."""
    from es_analytics.examples.bank import BankAccount

    box = page.locator(f"{NOTEBOOK} .widget-vbox", has=page.locator(".noUi-handle")).last
    summary = box.locator(".widget-html").first
    before = summary.inner_text()
    handle = box.locator(".noUi-handle").first
    readout = box.locator(".widget-readout").first
    last = readout.inner_text().strip()
    track = box.locator(".noUi-base").first.bounding_box()
    grip = handle.bounding_box()
    page.mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
    page.mouse.down()  # drag the handle past the track's left end: its first moment
    page.mouse.move(track["x"] - 40, grip["y"] + grip["height"] / 2, steps=15)
    page.mouse.up()
    page.wait_for_function("([el, last]) => el.textContent.trim() !== last", arg=[readout.element_handle(), last],
                           timeout=20_000)
    label = readout.inner_text().strip()
    summary.filter(has_text=f"as of {label}").wait_for(timeout=20_000)  # the states query ran
    assert summary.inner_text() != before
    with Lake.open(lake) as opened:
        first = opened.sql("SELECT min(occurred_at) AS t FROM events WHERE aggregate_type = 'BankAccount'")["t"][0]
        expected = opened.states(BankAccount, as_of=first)
    assert label == first.strftime("%Y-%m-%d %H:%M UTC")
    assert f"{expected.height:,} BankAccount as of {label}" in summary.inner_text()
    richest = expected.sort("balance", descending=True)["aggregate_id"][0]
    assert richest in box.locator(".widget-html").nth(1).inner_text()
    marks = box.locator(".jp-RenderedVega5 svg.marks g[class*='role-mark'] > *")
    assert marks.count() > 0  # the widget's chart is drawn


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
            page.locator(f"{NOTEBOOK} .jp-Cell").first.click()  # make the notebook the active widget
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            page.wait_for_function(ALL_RUN_JS, arg=cells, timeout=150_000)
            executed = lab.executed(notebook.name)
            expected = chart_outputs(executed)
            if notebook.name in SHOWCASES:
                assert expected > 0, f"{notebook.name} draws no chart"
            marks = wait_for_charts(page, expected)
            if notebook.name == "01_quickstart.ipynb":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.locator(".jp-OutputArea-output.jp-RenderedVega5").last.scroll_into_view_if_needed()
                page.screenshot(path=str(SCREENSHOT))
            assert len(marks) == expected and all(marks), f"after run: {marks}, expected {expected} charts"
            if notebook.name == "04_patterns.ipynb":
                pick_an_event_type(page)
            if notebook.name == "02_time_travel.ipynb":
                move_the_time_slider(page, lab.root.parent / "lake")
            assert not cell_errors(page)
            assert not console, console

            # 2. Save, reload, and the charts are there without running anything.
            page.keyboard.press("Control+s")
            page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
            saved = nbformat.read(lab.root / notebook.name, as_version=4)
            assert chart_outputs(saved) == expected
            page.reload()
            wait_for_cells(page, cells)
            marks = wait_for_charts(page, expected)
            assert len(marks) == expected and all(marks), f"after reload: {marks}, expected {expected} charts"
            assert not console, console

            # 3. The copy nbclient executed: not signed by this server, so untrusted.
            lab.shut_down_kernels()
            open_notebook(page, lab.url(f"executed-{notebook.name}"), cells)
            marks = wait_for_charts(page, expected)
            outputs = page.locator(f"{NOTEBOOK} .jp-OutputArea-output")
            assert outputs.count() > 0 and page.locator(f"{NOTEBOOK} .jp-OutputArea-output.jp-mod-trusted").count() == 0
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
