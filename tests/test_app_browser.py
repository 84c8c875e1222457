"""End to end: the app in a real browser (Debian's chromium driven by Playwright, never a downloaded one).

Starts the app on a free 127.0.0.1 port in this process, runs each modality tab with small settings,
checks that outputs and stats appear, and saves one screenshot per tab under ``artifacts/app/``.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "app"
# tab -> max new frames for its run
RUNS = {"text": 12, "image": 16, "speech": 12}


def _title(modality: str) -> str:
    from mmspec import modalities

    return modalities.get(modality).title


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from mmspec.demos import app

    demo = app.build_app()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=app.CSS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium not installed (apt-get install chromium); the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url)
        page.wait_for_selector("#run-text", timeout=60_000)
        yield page
        browser.close()


@pytest.mark.parametrize("modality", list(RUNS))
def test_tab_runs_and_shows_outputs_and_stats(page, modality):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # 1. Open the tab and set a small number of new frames.
    page.get_by_role("tab", name=_title(modality)).click()
    box = page.locator(f"#maxnew-{modality} input[type=number]")
    box.fill(str(RUNS[modality]))
    box.press("Tab")
    # 2. Run; wait for the final status line.
    page.locator(f"#run-{modality}").click()
    status = page.locator(f"#status-{modality}")
    status.get_by_text("Done on").wait_for(timeout=150_000)
    # 3. Every column shows a header, an output and its stats; the table lists four methods.
    for c in range(4):
        assert "wall" in page.locator(f"#stats-{modality}-{c}").inner_text()
        assert "speedup" in page.locator(f"#stats-{modality}-{c}").inner_text()
        out = page.locator(f"#out-{modality}-{c}")
        assert "running" not in page.locator(f"#stats-{modality}-{c}").inner_text()
        if modality == "text":  # a monospace code block; drafted runs marked without padding
            code = out.locator("pre.mm-code")
            assert code.inner_text().strip()
            assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily")
            assert code.evaluate("e => getComputedStyle(e).whiteSpace") == "pre"
            marks = out.locator("mark.mm-draft")
            if marks.count():
                assert marks.first.evaluate("e => getComputedStyle(e).paddingLeft") == "0px"
        elif modality == "image":
            assert out.locator("img").count() >= 1
        else:
            assert out.locator("audio, .waveform-container, [data-testid='waveform-output']").count() >= 1
    assert "identical to baseline" in page.locator(f"#head-{modality}-1").inner_text()
    assert page.locator(f"#table-{modality}").get_by_text("autoregressive").count() >= 1
    page.wait_for_timeout(500)  # let the plot render
    shot = ARTIFACTS / f"{modality}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_stop_cancels_and_the_app_keeps_serving(page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("tab", name=_title("text")).click()
    box = page.locator("#maxnew-text input[type=number]")
    box.fill("200")
    box.press("Tab")
    page.locator("#run-text").click()
    status = page.locator("#status-text")
    status.get_by_text("Running").wait_for(timeout=60_000)
    page.locator("#stop-text").click()
    try:
        status.get_by_text("Stopped").wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # the run's last update
        for c in range(4):  # Stop clears every "running…" label
            assert "running" not in page.locator(f"#stats-text-{c}").inner_text()
    finally:
        page.screenshot(path=str(ARTIFACTS / "text-stopped.png"), full_page=True)
    # the next run still completes
    box.fill("4")
    box.press("Tab")
    page.locator("#run-text").click()
    try:
        status.get_by_text("Done on").wait_for(timeout=120_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "text-after-stop.png"), full_page=True)


def test_overlong_prompt_and_unserved_model_are_refused_on_screen(page):
    from mmspec.demos.serving import Server

    page.get_by_role("tab", name=_title("text")).click()
    prompt = page.locator("#prompt-text textarea")
    original = prompt.input_value()
    long = "x" * (Server().max_prompt_chars + 1)
    prompt.fill(long)
    assert prompt.input_value() == long  # the box does not cut it
    page.locator("#run-text").click()
    status = page.locator("#status-text")
    status.get_by_text("this server allows").wait_for(timeout=30_000)
    prompt.fill(original)
