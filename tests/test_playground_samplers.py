"""Generate mode's "More samplers", "Structured output" and watermark key in a real headless Chromium
(Debian's chromium, driven by Playwright) against a live `gpt2kit serve`, at desktop and phone sizes:
what the page sends, and what the server's answer holds.

test_screenshots_for_the_docs (re)writes docs/images/playground-samplers.png and playground-structured.png,
replaced only when their pixels change (test_playground.save_for_docs).
"""

import json
import re
import shutil

import pytest
from live_server import start_server
from test_playground import save_for_docs

from gpt2kit.paths import BUNDLED_DIR
from gpt2kit.samplers.help import HELP

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
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# The fields generate mode always sends; anything else in a body came from the new sections.
BASE_FIELDS = {
    "model",
    "prompt",
    "stream",
    "stream_options",
    "logprobs",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
}
SAMPLER_FIELDS = [
    "min_p",
    "typical_p",
    "top_n_sigma",
    "epsilon_cutoff",
    "eta_cutoff",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "xtc_threshold",
    "xtc_probability",
    "penalty_alpha",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
CHOICES = ["Montague", "Capulet", "Prince Escalus"]


@pytest.fixture(scope="module")
def page_url():
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    proc, url = start_server(BUNDLED_DIR)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(params=["desktop", "phone"])
def page(request, page_url):
    """A ready page at the device's size whose /v1/completions bodies are recorded in page.sent."""
    device = request.param
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=VIEWPORTS[device], has_touch=device == "phone", is_mobile=device == "phone")
        page.sent = []

        def record(route):
            page.sent.append(json.loads(route.request.post_data or "{}"))
            route.continue_()

        page.route("**/v1/completions", record)
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        page.device = device
        yield page
        assert all(u.startswith(page_url) for u in requests), requests  # offline-capable: no CDN
        browser.close()


def generate(page, prompt="ROMEO.", max_tokens=40, seed=1, **fields):
    """Fill the basic settings and Generate; returns once the page has the whole answer (or an error)."""
    page.fill("#prompt", prompt)
    page.fill("#max_tokens", str(max_tokens))
    page.fill("#seed", str(seed))
    for selector, value in fields.items():
        page.fill("#" + selector, str(value))
    page.click("#generate")
    sync_api.expect(page.locator("#generate")).to_be_enabled(timeout=120000)


def generated_text(page) -> str:
    """The continuation as the page shows it (the output less the echoed prompt)."""
    return page.evaluate("$('output').textContent.slice($('echo').textContent.length)")


def open_section(page, summary):
    page.locator("summary", has_text=summary).click()


def choose_structured(page, kind, text=None):
    open_section(page, "Structured output")
    page.get_by_label("Shape").select_option(kind)
    if text is not None:
        page.fill("#so_text", text)


def test_every_sampler_has_its_library_help_line(page):
    """The page's copy of samplers/help.py: every sampler of the brief is a control described by its line."""
    open_section(page, "More samplers")
    assert page.evaluate("SAMPLER_HELP") == HELP
    for name in SAMPLER_FIELDS:
        control = page.locator("#" + name)
        sync_api.expect(control).to_be_visible()
        help_id = control.get_attribute("aria-describedby")
        assert page.locator("#" + help_id).inner_text() == HELP[name]


def test_only_changed_samplers_are_sent_and_the_server_takes_them(page):
    generate(page, max_tokens=30)  # nothing changed: the body is the basic one
    assert set(page.sent[-1]) <= BASE_FIELDS, page.sent[-1]
    open_section(page, "More samplers")
    page.fill("#min_p", "0.05")
    page.fill("#typical_p", "1")  # its off value typed again: still not sent
    page.get_by_label("Mirostat", exact=True).select_option("v2")
    page.fill("#mirostat_tau", "3.5")
    page.fill("#dry_multiplier", "0.8")
    page.fill("#dry_sequence_breakers", "\\n, :, ;\n\\,")
    page.fill("#xtc_probability", "0.5")
    sync_api.expect(page.locator("#samplers-on")).to_have_text("(6 changed)")
    generate(page, max_tokens=30)
    sent = page.sent[-1]
    assert {k: v for k, v in sent.items() if k not in BASE_FIELDS} == {
        "min_p": 0.05,
        "mirostat": 2,
        "mirostat_tau": 3.5,
        "dry_multiplier": 0.8,
        "dry_sequence_breakers": ["\n", ":", ";", ","],
        "xtc_probability": 0.5,
    }
    sync_api.expect(page.locator("#error")).to_have_text("")
    assert page.locator("#output .token").count() > 0
    # Reset: every one back to off, the body basic again
    page.get_by_role("button", name="Reset all to off").click()
    sync_api.expect(page.locator("#samplers-on")).to_have_text("")
    generate(page, max_tokens=5)
    assert set(page.sent[-1]) <= BASE_FIELDS, page.sent[-1]


def test_a_sampler_the_server_refuses_shows_its_400_message(page):
    open_section(page, "More samplers")
    page.fill("#min_p", "1.5")
    generate(page, max_tokens=5)
    assert page.sent[-1]["min_p"] == 1.5
    sync_api.expect(page.locator("#error")).to_contain_text("min_p", timeout=10000)
    assert page.locator("#output .token").count() == 0


def test_json_schema_output_parses_and_validates(page):
    jsonschema = pytest.importorskip("jsonschema")
    choose_structured(page, "json_schema", json.dumps(SCHEMA, indent=2))
    generate(page, prompt="A person, as JSON:\n", max_tokens=120)
    assert page.sent[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "playground", "schema": SCHEMA},
    }
    assert "structured_outputs" not in page.sent[-1]
    sync_api.expect(page.locator("#error")).to_have_text("")
    text = generated_text(page)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_any_json_object(page):
    choose_structured(page, "json_object")
    sync_api.expect(page.locator("#so_text")).to_be_hidden()
    generate(page, prompt="{", max_tokens=60, seed=2)
    assert page.sent[-1]["response_format"] == {"type": "json_object"}
    sync_api.expect(page.locator("#error")).to_have_text("")
    text = generated_text(page)
    assert text.startswith("{")
    # the bundled model writes long strings: an object it could not close in 60 tokens is said to be cut
    try:
        assert isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        sync_api.expect(page.locator("#usage")).to_contain_text("cut at max tokens")


def test_choices_give_one_of_them(page):
    choose_structured(page, "choice", "\n".join(CHOICES))
    for seed in (1, 2, 3):
        generate(page, prompt="Who is Romeo's family?", max_tokens=20, seed=seed)
        assert page.sent[-1]["structured_outputs"] == {"choice": CHOICES}
        sync_api.expect(page.locator("#error")).to_have_text("")
        assert generated_text(page) in CHOICES


def test_regex_output_matches(page):
    pattern = "[A-Z][a-z]{2,8} (loves|hates) [A-Z][a-z]{2,8}\\."
    choose_structured(page, "regex", pattern)
    generate(page, max_tokens=30)
    assert page.sent[-1]["structured_outputs"] == {"regex": pattern}
    sync_api.expect(page.locator("#error")).to_have_text("")
    assert re.fullmatch(pattern, generated_text(page))


@pytest.mark.parametrize(
    "schema,message", [('{"type": "object",', "not valid JSON"), ('["a list"]', "is a JSON object")]
)
def test_an_invalid_schema_is_refused_before_sending(page, schema, message):
    choose_structured(page, "json_schema", schema)
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text(message)
    sync_api.expect(page.locator("#so_text")).to_have_attribute("aria-invalid", "true")
    sync_api.expect(page.locator("#so_text")).to_be_focused()
    page.wait_for_timeout(300)
    assert page.sent == []
    # fixed, it goes
    page.fill("#so_text", json.dumps(SCHEMA))
    generate(page, prompt="A person, as JSON:\n", max_tokens=120)
    assert len(page.sent) == 1
    sync_api.expect(page.locator("#so_text")).to_have_attribute("aria-invalid", "false")


def test_a_regex_the_server_refuses_shows_its_message(page):
    choose_structured(page, "regex", "(unclosed")
    generate(page, max_tokens=5)
    assert page.sent[-1]["structured_outputs"] == {"regex": "(unclosed"}
    sync_api.expect(page.locator("#error")).to_contain_text("regex", timeout=10000)


def test_watermark_key_marks_the_text_for_detect(page):
    """The key goes as the watermark extension; the answer's text is watermarked for that key alone."""
    from gpt2kit.provenance.watermark import detect
    from gpt2kit.tokenizer import gpt2_tokenizer

    encode = gpt2_tokenizer().encode
    open_section(page, "Watermark")
    page.fill("#watermark_key", "15485863")
    generate(page, max_tokens=200, temperature=1.0, top_k=0)
    assert page.sent[-1]["watermark"] == {"key": 15485863}
    sync_api.expect(page.locator("#error")).to_have_text("")
    ids = encode(generated_text(page))
    assert detect(ids, key=15485863).z > 4
    assert detect(ids, key=12345).z < 4  # another key finds nothing
    page.fill("#watermark_key", "1.5")
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text("whole number")
    assert len(page.sent) == 1


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_screenshots_for_the_docs(page_url, device):
    """The sections as the docs show them: samplers set, and a JSON schema's answer. The desktop pictures
    go into the docs; the phone run checks the same steps at a phone's width."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport=VIEWPORTS[device]).new_page()
        page.sent = []
        page.goto(page_url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        open_section(page, "More samplers")
        page.fill("#min_p", "0.05")
        page.fill("#dry_multiplier", "0.8")
        generate(page, max_tokens=40, seed=1)
        sync_api.expect(page.locator("#error")).to_have_text("")
        page.locator("#more-samplers").scroll_into_view_if_needed()
        shot = page.screenshot(full_page=True, animations="disabled")
        if device == "desktop":
            assert save_for_docs(shot, "playground-samplers.png").is_file()
        page.get_by_role("button", name="Reset all to off").click()
        open_section(page, "More samplers")  # closed again
        choose_structured(page, "json_schema", json.dumps(SCHEMA, indent=2))
        generate(page, prompt="A person, as JSON:\n", max_tokens=120, seed=1)
        page.evaluate("$('so_text').scrollTop = 0")
        sync_api.expect(page.locator("#error")).to_have_text("")
        json.loads(generated_text(page))
        shot = page.screenshot(full_page=True, animations="disabled")
        if device == "desktop":
            assert save_for_docs(shot, "playground-structured.png").is_file()
        browser.close()


def test_contrastive_search_is_sent_and_gives_the_librarys_text(page):
    """penalty_alpha with top-k: the page sends it, and the server answers with LM.generate's text."""
    open_section(page, "More samplers")
    page.fill("#penalty_alpha", "0.6")
    generate(page, max_tokens=12)
    sent = page.sent[-1]
    assert sent["penalty_alpha"] == 0.6 and sent.get("top_k", 0) >= 2, sent
    sync_api.expect(page.locator("#error")).to_have_text("")
    assert page.locator("#output .token").count() > 0
