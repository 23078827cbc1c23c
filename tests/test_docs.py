"""The documentation cannot go stale quietly: the site builds strictly and offline, the CLI reference is what
--help prints, the HTTP reference names what the server declares, and the README stays a README whose
set-up commands are CI's and whose every link lands.

(The examples in the pages run in tests/test_examples.py; the notebook in tests/test_notebook.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COLAB = "https://colab.research.google.com/github/gpt2kit/gpt2kit/blob/main/notebooks/quickstart.ipynb"


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the site -----------------------------------------------------------------------------------------


def test_site_builds_strictly_and_offline(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, an API name mkdocstrings
    cannot find, all fail. Every proxy points at a closed port, so anything fetched at build time fails too."""
    pytest.importorskip("mkdocs")
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 20
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, page  # readable offline
    api = (site / "reference" / "python.html").read_text(encoding="utf-8")
    for name in (
        "gpt2kit.load",
        "gpt2kit.LM.generate",
        "gpt2kit.encode_dataset",
        "gpt2kit.finetune",
        "gpt2kit.options.GenerateOptions",
        "gpt2kit.training.options.TrainOptions",
    ):
        assert f'id="{name}"' in api, f"mkdocstrings rendered no {name}"


# --- the CLI reference --------------------------------------------------------------------------------


def test_cli_reference_is_what_help_prints():
    cli = _cli_reference()
    written = cli.PAGE.read_text(encoding="utf-8")
    made_with = cli.recorded_version(written)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if made_with != here:
        pytest.skip(
            f"docs/reference/cli.md was made with Python {made_with}; argparse lays help out differently "
            f"on {here}, so it is compared on {made_with} only"
        )
    assert written == cli.page(), "docs/reference/cli.md is stale: run `python scripts/cli_reference.py`"


def test_readme_links_every_commands_flags():
    """A newcomer gets from the README to any command's flags in one click."""
    cli = _cli_reference()
    names = [name for name, _ in cli.commands(cli.help_text())]
    readme = README.read_text(encoding="utf-8")
    missing = [n for n in names if f"docs/reference/cli.md#gpt2kit-{n})" not in readme]
    assert not missing, f"README.md's Documentation section links no reference for: {', '.join(missing)}"


# --- the README ---------------------------------------------------------------------------------------


def _code_blocks(text: str) -> list[list[str]]:
    return [block.strip("\n").splitlines() for block in re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M)]


def test_readme_is_short_and_its_develop_commands_are_ci():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is at most 250 lines: move reference and evidence to docs/"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert len(ci) == 2, ci
    develop = text.split("### Develop", 1)[1]
    assert _code_blocks(develop)[0] == ci, "README's develop block must be exactly the two commands .ci/run runs"
    use = text.split("### Use", 1)[1].split("###", 1)[0]
    assert "pip install torch==2.13.0 -e ." in _code_blocks(use)[0]


def test_colab_badge_opens_the_notebook():
    assert (ROOT / "notebooks" / "quickstart.ipynb").is_file()
    for where in (README, DOCS / "getting-started" / "notebook.md", ROOT / "notebooks" / "quickstart.ipynb"):
        assert COLAB in where.read_text(encoding="utf-8"), where


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (and Python-Markdown's toc, for the simple headings these pages use)."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*]{1,2}", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_land():
    """Every relative link in the README opens a file of this repository, at a heading that exists."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) >= 30
    for link in relative:
        path, _, anchor = link.partition("#")
        target = README.parent / path if path else README
        assert target.exists(), f"README.md links {link}: no such file"
        if anchor:
            assert target.suffix == ".md", link
            assert anchor in _anchors(target), f"README.md links {link}: {path or 'README.md'} has no such heading"


def test_slugs_match_githubs():
    assert github_slug("x86-64 with AVX2") == "x86-64-with-avx2"
    assert github_slug("CPU (Linux)") == "cpu-linux"
    assert github_slug("`gpt2kit generate`") == "gpt2kit-generate"
    assert (
        github_slug("The playground's write mode: a writing partner") == "the-playgrounds-write-mode-a-writing-partner"
    )


# --- the HTTP reference -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict:
    from live_server import start_server

    from gpt2kit.paths import BUNDLED_DIR

    proc, url = start_server(BUNDLED_DIR)
    try:
        with urllib.request.urlopen(url + "/openapi.json", timeout=30) as r:
            return json.load(r)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _request_fields(schema: dict, components: dict, seen: set[str]) -> set[str]:
    """Every property name a request body may hold, following $refs, unions and arrays."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return set()
        seen.add(name)
        return _request_fields(components[name], components, seen)
    fields = set(schema.get("properties", {}))
    for sub in [
        *schema.get("properties", {}).values(),
        *schema.get("anyOf", []),
        *schema.get("oneOf", []),
        schema.get("items"),
        schema.get("additionalProperties"),
    ]:
        if isinstance(sub, dict) and sub:
            fields |= _request_fields(sub, components, seen)
    return fields


def test_http_reference_names_every_endpoint_and_request_field(openapi):
    page = (DOCS / "reference" / "http.md").read_text(encoding="utf-8")
    components = openapi.get("components", {}).get("schemas", {})
    for path, operations in openapi["paths"].items():
        pattern = re.escape(path)
        pattern = re.sub(r"\\\{[^}]*\\\}", r"\\{[^}]+\\}", pattern)  # /v1/models/{model_id} as /v1/models/{id}
        for method, operation in operations.items():
            assert re.search(rf"{method.upper()} {pattern}(?![\w/])", page), (
                f"docs/reference/http.md does not describe {method.upper()} {path}"
            )
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                missing = sorted(f for f in _request_fields(body, components, set()) if f"`{f}`" not in page)
                assert not missing, f"docs/reference/http.md does not describe {path}'s fields {missing}"
