"""The playground in a real headless Chromium (Debian's chromium, driven by Playwright)."""
import shutil

import pytest

from gpt2kit.paths import BUNDLED_DIR
from test_server import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def page_url():
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    proc, url = start_server(BUNDLED_DIR)  # the model a new user meets first
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
        page.fill("#max_tokens", "200")
        page.fill("#seed", "1")
        # Record the token count at every change of the output, whatever the machine's speed.
        page.evaluate("""() => {
            window.tokenCounts = [];
            const out = document.querySelector('#output');
            new MutationObserver(() => window.tokenCounts.push(out.querySelectorAll('.token').length))
                .observe(out, {childList: true, subtree: true});
        }""")
        page.click("#generate")
        sync_api.expect(page.locator("#output .token")).to_have_count(200, timeout=60000)
        counts = set(page.evaluate("window.tokenCounts"))
        assert len(counts - {0, 200}) >= 3  # tokens appeared in several steps while streaming, not all at once
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
