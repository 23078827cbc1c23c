"""The playground's model picker in a real headless Chromium, against a server with two models: the text
comes from the model chosen (checked against the library's own generation from it), in both modes."""

import json
import shutil

import pytest
from live_server import start_server
from test_multimodel import tiny_model
from test_playground import ARGS, CHROMIUM

import gpt2kit

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served(hf_tiny, tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    other = tiny_model(tmp_path_factory.mktemp("other") / "other", seed=1, n_positions=128, n_layer=1)
    proc, url = start_server([hf_tiny, other])
    yield (
        url,
        {
            "tiny": gpt2kit.load(hf_tiny, device="cpu", dtype="float32"),
            "other": gpt2kit.load(other, device="cpu", dtype="float32"),
        },
    )
    proc.terminate()
    proc.wait(timeout=30)


def generated(page) -> str:
    return page.evaluate("[...document.querySelectorAll('#output .token')].map((s) => s.textContent).join('')")


def test_the_picker_switches_model_in_both_modes_and_survives_reload(served, tmp_path):
    url, lms = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        bodies = []
        page.on("request", lambda r: r.method == "POST" and bodies.append((r.url, json.loads(r.post_data or "{}"))))
        page.goto(url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        picker = page.get_by_role("combobox", name="Model")
        sync_api.expect(picker.locator("option")).to_have_count(2)
        assert picker.locator("option").all_inner_texts() == ["tiny", "other"] and picker.input_value() == "tiny"
        page.fill("#prompt", "ROMEO.")
        page.fill("#max_tokens", "10")
        page.fill("#temperature", "0")
        for name in ("other", "tiny"):  # greedy text from each model in turn, on one page
            picker.select_option(name)
            page.click("#generate")
            sync_api.expect(page.locator("#output .token")).to_have_count(10, timeout=30000)
            sync_api.expect(page.locator("#generate")).to_be_enabled()
            expected = lms[name].generate("ROMEO.", length=10, temperature=0, include_prefix=False, stop_at_eot=False)[
                0
            ]
            assert generated(page) == expected, name
            assert bodies[-1][1]["model"] == name
        page.get_by_role("button", name="Next-token probabilities").click()
        sync_api.expect(page.locator("#explorer-title")).to_have_text("Next token after the prompt")
        assert bodies[-1][0].endswith("/v1/next_token") and bodies[-1][1]["model"] == "tiny"
        # the choice is kept across a reload, and write mode asks the chosen model
        picker.select_option("other")
        page.reload()
        sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=20000)
        sync_api.expect(picker).to_have_value("other")
        page.get_by_role("tab", name="Write").click()
        sync_api.expect(picker).to_be_visible()
        page.locator("#write-settings summary").click()  # the sampling controls, tucked away
        page.fill("#w_temperature", "0")
        page.fill("#w_length", "8")
        doc = page.get_by_role("textbox", name="Document")
        doc.click()
        page.keyboard.type("What light")
        page.get_by_role("button", name="Suggest").click()
        box = page.get_by_role("listbox", name="Suggestions")
        sync_api.expect(box.get_by_role("option")).to_have_count(3, timeout=30000)
        sync_api.expect(box).to_have_attribute("aria-busy", "false", timeout=60000)
        expected = lms["other"].generate("What light", length=8, temperature=0, include_prefix=False)[0]
        assert page.evaluate("W.suggestions.map((s) => s.text)") == [expected] * 3  # greedy: all three alike
        assert bodies[-1][0].endswith("/v1/completions") and bodies[-1][1]["model"] == "other"
        page.screenshot(path=str(tmp_path / "playground-models.png"))
        browser.close()
