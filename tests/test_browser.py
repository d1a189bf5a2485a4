"""End-to-end: the explorer notebook's widgets work in a real JupyterLab.

Starts JupyterLab on a free localhost port (on a temporary copy of
notebooks/), opens notebooks/01_explore_trajectories.ipynb in headless Debian
Chromium driven by the Python ``playwright`` package (its bundled driver, with
``executable_path=/usr/bin/chromium``: no browser download), runs all cells
from the "Run" menu, waits for the explorer widgets, moves the "sample" slider
and then the "class" dropdown, and checks each time that the matplotlib figure
(an <img> in the widget cell's output) is redrawn and looks different.

Skipped when /usr/bin/chromium or playwright is missing, unless
TRAJLAB_REQUIRE_BROWSER=1 (set by CI), which turns the skip into a failure.

Screenshots go to $TRAJLAB_SCREENSHOT_DIR (default: <pytest tmp_path>/screenshots)
and, with TRAJLAB_SAVE_SCREENSHOT=1, are also copied to runs/browser/:
jupyterlab_widgets.png (the page: widgets + figure), figure_{before,after}_<label>.png,
failure.png on failure. TRAJLAB_CHROMIUM overrides the browser path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jupyter_server import JupyterLabServer, copy_notebooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_explore_trajectories.ipynb"
NOTEBOOKS_DIR = REPO / "notebooks"
CHROMIUM = os.environ.get("TRAJLAB_CHROMIUM", "/usr/bin/chromium")

# Flags this machine needs (closed network, root, no GPU); the profile is a
# fresh --user-data-dir under tmp_path (launch_persistent_context) and
# headless=True adds --headless.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
]

# Descriptions of the widgets moved in turn; the figure must change each time.
WIDGET_LABELS = ("sample", "class")

T_LOAD = 60_000  # ms: lab page + notebook open
T_RUN = 120_000  # ms: "Run All Cells" until every code cell has a prompt number
T_REDRAW = 30_000  # ms: figure redrawn after the widget moved


def _skip_or_fail(reason: str):
    if os.environ.get("TRAJLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (TRAJLAB_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("TRAJLAB_SCREENSHOT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _publish(paths: list[Path]) -> None:
    if os.environ.get("TRAJLAB_SAVE_SCREENSHOT") == "1":
        out = REPO / "runs" / "browser"
        out.mkdir(parents=True, exist_ok=True)
        for p in paths:
            if p.exists():
                shutil.copy2(p, out / p.name)


# JS helpers run in the page --------------------------------------------------

# Prompt and output text of every code cell of the open notebook.
_JS_CELLS = """
() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')).map(c => ({
    prompt: ((c.querySelector('.jp-InputPrompt') || {}).textContent || '').trim(),
    output: ((c.querySelector('.jp-Cell-outputArea') || {}).innerText || '').slice(-3000),
}))
"""

# The figure(s) inside a cell's output area: the <img> srcs (inline backend).
_JS_IMG_SRCS = """
(cell) => Array.from(cell.querySelectorAll('.jp-Cell-outputArea img')).map(i => i.src)
"""


def _wait_kernel_idle(page, server, timeout_ms: int) -> None:
    """Until the notebook's kernel is started, connected and idle: the server
    says so (/api/sessions) and so does the status bar ("Python 3 | Idle").
    (The toolbar's execution indicator says "idle" before any kernel exists.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    state = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.url("api/sessions"), timeout=5) as r:
                state = [(s["kernel"]["execution_state"], s["kernel"].get("connections", 1))
                         for s in json.load(r) if s.get("kernel")]
        except OSError as e:
            state = repr(e)
        if isinstance(state, list) and any(st == "idle" and n >= 1 for st, n in state):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"kernel not started and idle in time: {state}")
    page.wait_for_function(
        r"""() => { const t = (document.querySelector('.jp-StatusBar-Widget') || {}).innerText || '';
                   return /\|\s*Idle/.test(t) && !/No Kernel/.test(t); }""",
        timeout=max(1000, int((deadline - time.monotonic()) * 1000)))


def _run_all_cells(page, retries: int = 3) -> None:
    """Run > Run All Cells, as a user would; until a cell starts running."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(retries):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(
                r"""() => Array.from(document.querySelectorAll(
                        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt'))
                        .some(p => /\[(\*|\d+)\]/.test(p.textContent))""",
                timeout=15_000)
            return
        except PlaywrightTimeout:
            print(f"Run All Cells: nothing started (attempt {attempt + 1})")
    raise AssertionError("Run > Run All Cells did not start any cell")


def _wait_all_executed(page, timeout_ms: int) -> None:
    """Until every code cell shows [n]. "Run All" stops at a cell that raises,
    leaving later cells at [ ]: nothing running ([*]) for a few seconds with
    cells still unrun fails at once, showing the output of the last cell run."""
    deadline = time.monotonic() + timeout_ms / 1000
    cells, stalled_since = [], None
    while time.monotonic() < deadline:
        cells = page.evaluate(_JS_CELLS)
        done = [bool(re.fullmatch(r"\[\d+\]:?", c["prompt"])) for c in cells]
        if cells and all(done):
            return
        if any(done) and not any("*" in c["prompt"] for c in cells):
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 5:
                last = max(i for i, d in enumerate(done) if d)
                raise AssertionError(
                    f"Run All stopped at code cell {last + 1} of {len(cells)}; its output:\n"
                    + cells[last]["output"])
        else:
            stalled_since = None
        time.sleep(0.5)
    raise AssertionError(
        "cells not all executed in time; prompts: " + " ".join(c["prompt"] for c in cells))


def _find_widget(page, label: str):
    """(widget, cell) locators of the widget whose description is ``label``,
    or (None, None)."""
    lab = page.locator(".jp-Cell-outputArea .jupyter-widgets .widget-label",
                       has_text=re.compile(rf"^\s*{re.escape(label)}\s*$", re.IGNORECASE))
    if not lab.count():
        return None, None
    widget = lab.first.locator("xpath=..")  # the widget's own box (label + control)
    cell = lab.first.locator("xpath=ancestor::div[contains(@class,'jp-CodeCell')][1]")
    return widget, cell


def _figure(cell):
    """The largest <img> in the cell's output: the matplotlib figure."""
    imgs = cell.locator(".jp-Cell-outputArea img")
    best, area = None, 0
    for i in range(imgs.count()):
        box = imgs.nth(i).bounding_box()
        if box and box["width"] * box["height"] > area:
            best, area = imgs.nth(i), box["width"] * box["height"]
    assert best is not None, "no figure (<img>) in the widget cell's output"
    return best


def _wait_redrawn(page, cell, srcs_before, timeout_ms: int):
    """Until the cell's <img> srcs differ from ``srcs_before`` and hold still."""
    handle = cell.element_handle()
    deadline = time.monotonic() + timeout_ms / 1000
    srcs = srcs_before
    while time.monotonic() < deadline:
        srcs = page.evaluate(_JS_IMG_SRCS, handle)
        if srcs and srcs != srcs_before:
            page.wait_for_timeout(400)
            if page.evaluate(_JS_IMG_SRCS, handle) == srcs:
                # and every <img> has finished loading
                page.wait_for_function(
                    "(c) => Array.from(c.querySelectorAll('.jp-Cell-outputArea img'))"
                    ".every(i => i.complete && i.naturalWidth > 0)", arg=handle, timeout=5_000)
                return srcs
        time.sleep(0.2)
    return srcs


def _move(widget) -> str:
    """Change the widget's value the way a user would; return what was done."""
    select = widget.locator("select")
    if select.count():
        options = select.first.locator("option").all_inner_texts()
        current = select.first.evaluate("s => s.options[s.selectedIndex].text")
        new = next(o for o in options if o != current)
        select.first.select_option(label=new)
        return f"dropdown {current!r} -> {new!r}"
    handle = widget.locator(".noUi-handle")
    if handle.count():  # ipywidgets 8 slider: focus the handle, press an arrow key
        before = widget.locator(".widget-readout").first.inner_text()
        handle.first.click()
        handle.first.press("ArrowRight")
        after = widget.locator(".widget-readout").first.inner_text()
        if after == before:  # already at the maximum
            handle.first.press("ArrowLeft")
            handle.first.press("ArrowLeft")
            after = widget.locator(".widget-readout").first.inner_text()
        return f"slider {before} -> {after}"
    box = widget.locator("input")
    if box.count():  # IntText / BoundedIntText / Text
        current = box.first.input_value()
        try:
            new = str(int(current) + 1)
        except ValueError:
            new = current + "x"
        box.first.fill(new)
        box.first.press("Enter")
        return f"input {current!r} -> {new!r}"
    raise AssertionError(f"don't know how to move widget: {widget.inner_html()[:500]}")


# The test ---------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_widgets_redraw_figure_in_jupyterlab(tmp_path):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the python package playwright is not installed (pip install playwright)")
    pytest.importorskip("jupyterlab")
    pytest.importorskip("ipywidgets")

    assert (NOTEBOOKS_DIR / NOTEBOOK).is_file(), f"missing {NOTEBOOKS_DIR / NOTEBOOK}"
    root = copy_notebooks(NOTEBOOKS_DIR, tmp_path / "notebooks")
    shots = _screenshot_dir(tmp_path)
    saved: list[Path] = []

    with JupyterLabServer(root, tmp_path / "jupyter") as server, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1100},
            timeout=60_000,
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        try:
            page.goto(server.url(f"lab/tree/{NOTEBOOK}"), wait_until="domcontentloaded", timeout=T_LOAD)
            page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=T_LOAD)
            _wait_kernel_idle(page, server, T_LOAD)
            _run_all_cells(page)
            _wait_all_executed(page, T_RUN)

            # The widget area renders.
            page.locator(".jp-Cell-outputArea .jupyter-widgets .widget-label").first.wait_for(timeout=T_REDRAW)
            moved = []
            for label in WIDGET_LABELS:
                widget, cell = _find_widget(page, label)
                assert widget is not None, f"no widget described as {label!r} in the outputs"
                widget.scroll_into_view_if_needed()
                cell.locator(".jp-Cell-outputArea img").first.wait_for(timeout=T_REDRAW)
                page.wait_for_timeout(300)  # let the first drawing settle
                srcs_before = page.evaluate(_JS_IMG_SRCS, cell.element_handle())
                fig_before = _figure(cell).screenshot(path=str(shots / f"figure_before_{label}.png"))
                saved.append(shots / f"figure_before_{label}.png")

                action = _move(widget)

                srcs_after = _wait_redrawn(page, cell, srcs_before, T_REDRAW)
                assert srcs_after != srcs_before, \
                    f"figure not redrawn after moving {label!r} ({action})"
                fig_after = _figure(cell).screenshot(path=str(shots / f"figure_after_{label}.png"))
                saved.append(shots / f"figure_after_{label}.png")
                assert fig_after != fig_before, \
                    f"figure redrawn but identical after moving {label!r} ({action})"
                moved.append(f"{label}: {action}")

            # What a person sees: the widgets and the new figure.
            cell.evaluate("c => c.scrollIntoView()")
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / "jupyterlab_widgets.png"))
            saved.append(shots / "jupyterlab_widgets.png")
        except BaseException:
            try:
                page.screenshot(path=str(shots / "failure.png"))
                saved.append(shots / "failure.png")
            except Exception:  # noqa: BLE001
                pass
            print("browser console errors:\n" + "\n".join(console[-20:]))
            print("jupyter server log tail:\n" + server.log_tail())
            raise
        finally:
            _publish(saved)
            context.close()
    print(f"moved {'; '.join(moved)}; screenshots in {shots}")
