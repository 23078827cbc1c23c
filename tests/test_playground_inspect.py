"""The playground's Inspect mode in a real headless Chromium (Debian's chromium, driven by Playwright), at
desktop and phone sizes. GPT2KIT_DOC_SCREENSHOTS=1 also writes docs/inspect-desktop.png and docs/inspect-phone.png."""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from live_server import start_server

from gpt2kit.paths import BUNDLED_DIR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
TEXT = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Quantum giraffes invoice the spatula department on Tuesdays."
)


def inspected(url, text):
    request = urllib.request.Request(
        url + "/v1/inspect",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"text": text}).encode(),
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def page_url():
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    proc, url = start_server(BUNDLED_DIR)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    "name,viewport", [("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})]
)
def test_inspect_colours_each_token_and_shows_its_alternatives(page_url, name, viewport, tmp_path):
    from gpt2kit.tokenizer import gpt2_tokenizer

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=viewport, has_touch=name == "phone", is_mobile=name == "phone")
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        page.get_by_role("tab", name="Inspect").click()
        assert page.url.endswith("#inspect")
        page.get_by_label("Text to inspect").fill(TEXT)
        page.get_by_role("button", name="Inspect", exact=True).click()
        tokens = page.locator("#inspect-output .itok")
        sync_api.expect(tokens).to_have_count(len(gpt2_tokenizer().encode(TEXT)), timeout=60000)
        assert page.locator("#inspect-output").inner_text() == TEXT
        # each token wears its bucket's colour: what the API answers for the same text
        colours = tokens.evaluate_all("els => els.map((e) => +e.className.match(/gltr(\\d)/)[1])")
        assert colours == [t["bucket"] for t in inspected(page_url, TEXT)["tokens"]] and len(set(colours)) >= 3
        for k in range(4):  # each bucket's colour differs
            assert page.locator(f"#inspect-summary .gltr{k}").count() == 1
        assert "mean log-rank" in page.locator("#inspect-summary").inner_text()
        assert page.locator(".ihist").count() == 2
        # hover (desktop) or tap (phone) a token: its rank and the model's alternatives
        token = tokens.nth(8)
        if name == "phone":
            token.tap()
        else:
            token.hover()
        sync_api.expect(page.locator("#explorer-title")).to_contain_text("rank")
        assert page.locator("#alternatives li").count() >= 10
        assert page.locator("#alternatives li.chosen").count() == 1
        assert "Top prediction" in page.locator("#explorer-hint").inner_text()
        # a reload stays in the mode
        folder = DOCS if os.environ.get("GPT2KIT_DOC_SCREENSHOTS") else tmp_path
        page.screenshot(path=str(folder / f"inspect-{name}.png"), full_page=name == "phone")
        page.reload()
        sync_api.expect(page.get_by_role("tab", name="Inspect")).to_have_attribute("aria-selected", "true")
        assert page.locator("#inspect-mode").is_visible() and not page.locator("#generate-mode").is_visible()
        # an empty text gets a message, not a request
        page.get_by_label("Text to inspect").fill("")
        page.get_by_role("button", name="Inspect", exact=True).click()
        sync_api.expect(page.locator("#inspect-error")).not_to_be_empty()
        assert all(u.startswith(page_url) for u in requests), requests  # nothing fetched elsewhere
        browser.close()
