"""The playground in a real headless Chromium (Debian's chromium, driven by Playwright)."""
import shutil

import pytest

from test_server import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def page_url(hf_tiny):
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    proc, url = start_server(hf_tiny)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}])
def test_generate_streams_and_token_explorer(page_url, viewport, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=viewport)
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        page.fill("#prompt", "ROMEO.")
        page.fill("#max_tokens", "40")
        page.fill("#seed", "1")
        counts = []
        page.click("#generate")
        for _ in range(30):  # watch the text grow while it streams
            counts.append(page.locator("#output .token").count())
            if counts[-1] >= 40:
                break
            page.wait_for_timeout(50)
        sync_api.expect(page.locator("#output .token")).to_have_count(40, timeout=30000)
        assert len(set(counts)) > 2  # tokens arrived in several steps, not all at once
        assert page.locator("#echo").inner_text() == "ROMEO."
        token = page.locator("#output .token").nth(5)
        token.click()
        alternatives = page.locator("#alternatives li")
        assert alternatives.count() >= 10
        assert page.locator("#alternatives li.chosen").count() == 1
        assert "%" in page.locator("#explorer-title").inner_text()
        page.click("#next")
        sync_api.expect(page.locator("#explorer-title")).to_have_text("Next token after the prompt")
        assert page.locator("#alternatives li").count() == 20
        page.screenshot(path=str(tmp_path / f"playground-{viewport['width']}.png"), full_page=True)
        browser.close()
