"""The playground in a real headless Chromium (Debian's chromium, driven by Playwright).

test_screenshots_for_the_docs also (re)writes the playground's pictures in docs/images/, so the docs show
the page as it is today: a picture is replaced only when its pixels changed.
"""

import io
import json
import shutil
from pathlib import Path

import pytest
from live_server import start_server

from gpt2kit.paths import BUNDLED_DIR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOC_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
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


def doc_text(page) -> str:
    """The document's text as the page keeps it (what a download or a reload gives)."""
    return page.evaluate("docText(readDoc())")


def wait_for_suggestions(page, count=3):
    box = page.get_by_role("listbox", name="Suggestions")
    sync_api.expect(box.get_by_role("option")).to_have_count(count, timeout=30000)
    sync_api.expect(box).to_have_attribute("aria-busy", "false", timeout=90000)
    texts = [o.inner_text() for o in box.get_by_role("option").all()]
    assert any(t and "ended the text" not in t for t in texts), texts
    return box.get_by_role("option")


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}])
def test_write_mode_suggest_pick_edit_undo_reload(page_url, viewport, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport=viewport, accept_downloads=True)
        page = context.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        page.get_by_role("tab", name="Write").click()
        doc = page.get_by_role("textbox", name="Document")
        doc.click()
        page.keyboard.type("ROMEO.\nWhat light")
        typed = "ROMEO.\nWhat light"
        assert doc_text(page) == typed
        # ask: Tab at a desktop, the button on a phone
        if viewport["width"] > 800:
            page.keyboard.press("Tab")
        else:
            page.get_by_role("button", name="Suggest").click()
        options = wait_for_suggestions(page)
        assert options.count() == 3
        # pick the second with the keyboard at a desktop, a tap on a phone
        choice = options.nth(1).inner_text()
        if viewport["width"] > 800:
            sync_api.expect(options.nth(0)).to_have_attribute("aria-selected", "true")
            page.keyboard.press("ArrowDown")
            sync_api.expect(options.nth(1)).to_have_attribute("aria-selected", "true")
            page.keyboard.press("Enter")
        else:
            options.nth(1).click()
        sync_api.expect(page.get_by_role("listbox", name="Suggestions")).to_be_hidden()
        assert doc_text(page) == typed + choice
        model = page.locator("#doc .model")
        sync_api.expect(model).to_have_count(1)
        assert model.inner_text() == choice
        # hovering over model text shows the token explorer
        box = model.evaluate(
            "e => { const r = [...e.getClientRects()].find((r) => r.width > 6); "
            "return r && {x: r.left + 3, y: r.top + r.height / 2}; }"
        )
        page.mouse.move(box["x"], box["y"])
        sync_api.expect(page.locator("#explorer-title")).to_contain_text("%")
        assert page.locator("#alternatives li").count() >= 2
        # typing after it is the user's own text; the model's stays marked
        page.keyboard.type(" Yes.")
        assert doc_text(page) == typed + choice + " Yes."
        assert model.inner_text() == choice
        # editing inside the model's text makes it the user's (the mark goes)
        page.evaluate(f"setCaret({len(typed) + 1})")
        page.keyboard.type("Q")
        edited = typed + choice[:1] + "Q" + choice[1:] + " Yes."
        assert doc_text(page) == edited
        sync_api.expect(page.locator("#doc .model")).to_have_count(0)
        # Ctrl+Z undoes the edit (the mark is back), then the typing; the Undo button the insertion
        page.keyboard.press("Control+z")
        assert doc_text(page) == typed + choice + " Yes."
        sync_api.expect(page.locator("#doc .model")).to_have_count(1)
        page.keyboard.press("Control+z")
        assert doc_text(page) == typed + choice
        page.get_by_role("button", name="Undo").click()
        assert doc_text(page) == typed
        page.get_by_role("button", name="Redo").click()
        assert doc_text(page) == typed + choice
        sync_api.expect(page.locator("#doc .model")).to_have_count(1)
        # Escape dismisses; Again draws new ones
        doc.focus()
        page.evaluate(f"setCaret({len(typed + choice)})")
        page.get_by_role("button", name="Suggest").click()
        wait_for_suggestions(page)
        page.get_by_role("button", name="Again").click()
        wait_for_suggestions(page)
        page.screenshot(path=str(tmp_path / f"write-{viewport['width']}.png"), full_page=True)
        page.keyboard.press("Escape")
        sync_api.expect(page.get_by_role("listbox", name="Suggestions")).to_be_hidden()
        assert doc_text(page) == typed + choice
        # the marks can be switched off
        page.get_by_label("Mark model text").uncheck()
        assert page.locator("#doc .model").evaluate("e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"
        page.get_by_label("Mark model text").check()
        assert page.locator("#doc .model").evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
        # the document (and its marks) survive a reload, and download as they are
        page.reload()
        sync_api.expect(page.get_by_role("textbox", name="Document")).to_be_visible()
        assert doc_text(page) == typed + choice
        assert page.locator("#doc .model").inner_text() == choice
        with page.expect_download() as info:
            page.get_by_role("button", name="Download .md").click()
        assert info.value.suggested_filename == "document.md"
        assert open(info.value.path(), encoding="utf-8").read() == typed + choice
        assert all(u.startswith(page_url) or u.startswith("blob:") for u in requests), requests  # no CDN
        browser.close()


def save_for_docs(png: bytes, name: str) -> Path:
    """Write a screenshot to docs/images/NAME unless the one there has the same pixels (so an unchanged page
    leaves the checkout clean; a few anti-aliased pixels may differ between runs)."""
    from PIL import Image, ImageChops

    path = DOC_IMAGES / name
    new = Image.open(io.BytesIO(png)).convert("RGB")
    if path.is_file():
        old = Image.open(path).convert("RGB")
        if old.size == new.size:
            diff = ImageChops.difference(old, new).convert("L").point(lambda v: 255 if v > 16 else 0)
            if diff.histogram()[255] <= 0.001 * new.size[0] * new.size[1]:
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def _seeded(route):
    """The write mode's suggestions carry no seed: give every completion request one, so the pictures are
    the same from run to run (a seed's samples depend on the seed and their index only)."""
    body = json.loads(route.request.post_data or "{}")
    body.setdefault("seed", 3)
    route.continue_(post_data=json.dumps(body))


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_screenshots_for_the_docs(page_url, device):
    """Each mode as the docs show it: generate with the token explorer open, write with suggestions."""
    viewport = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}[device]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport=viewport).new_page()
        page.route("**/v1/completions", _seeded)
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        page.fill("#prompt", "ROMEO.")
        page.fill("#max_tokens", "60")
        page.fill("#seed", "1")
        page.click("#generate")
        sync_api.expect(page.locator("#output .token")).to_have_count(60, timeout=60000)
        page.locator("#output .token").nth(8).click()
        assert page.locator("#alternatives li").count() >= 10
        shot = page.screenshot(full_page=device == "phone", animations="disabled")
        assert save_for_docs(shot, f"generate-{device}.png").is_file()

        page.get_by_role("tab", name="Write").click()
        page.get_by_role("textbox", name="Document").click()
        page.keyboard.type("ROMEO.\nWhat light")
        page.get_by_role("button", name="Suggest").click()
        options = wait_for_suggestions(page)
        options.nth(1).click()
        sync_api.expect(page.locator("#doc .model")).to_have_count(1)
        page.get_by_role("button", name="Suggest").click()
        wait_for_suggestions(page)
        box = page.locator("#doc .model").evaluate(
            "e => { const r = [...e.getClientRects()].find((r) => r.width > 6); "
            "return r && {x: r.left + 3, y: r.top + r.height / 2}; }"
        )
        page.mouse.move(box["x"], box["y"])
        sync_api.expect(page.locator("#explorer-title")).to_contain_text("%")
        shot = page.screenshot(full_page=device == "phone", animations="disabled")
        assert save_for_docs(shot, f"write-{device}.png").is_file()
        browser.close()
