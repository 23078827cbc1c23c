"""`inspect` (GLTR) from Python against transformers' own logits, its sliding window, and `gpt2kit inspect`."""

import html as htmllib
import json
import math
import re

import pytest
import torch
from conftest import run_cli

from gpt2kit.errors import UserError
from gpt2kit.paths import HELDOUT_TEXT
from gpt2kit.provenance.inspect import TokenScore, inspect, windows
from gpt2kit.provenance.render import page, terminal

TEXT = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


@pytest.fixture(scope="module")
def hf_model(hf_tiny):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_tiny).eval()


@torch.no_grad()
def reference(hf_model, context, target):
    """transformers' rank, probability, top token and probability, and entropy of `target` after `context`."""
    logp = hf_model(torch.tensor([context])).logits[0, -1].double().log_softmax(-1)
    rank = int((logp > logp[target]).sum()) + 1
    p = logp.exp()
    return rank, float(p[target]), int(p.argmax()), float(p.max()), float(-(p * logp).sum())


def check_against(hf_model, token: TokenScore, context):
    rank, p, top, top_p, entropy = reference(hf_model, context, token.id)
    # ranks can differ only where float32 rounding reorders near-equal logits: a tiny random model has many
    assert abs(token.rank - rank) <= 3
    assert token.prob == pytest.approx(p, rel=1e-3) and token.top_prob == pytest.approx(top_p, rel=1e-3)
    assert token.entropy == pytest.approx(entropy, rel=1e-4)
    if token.top_prob > 1.001 * sorted(t.prob for t in token.alternatives)[-2]:  # no near tie at the top
        assert token.top_id == top


def test_every_token_scored_as_transformers_scores_it(lm_tiny, hf_model):
    result = inspect(lm_tiny, TEXT, alternatives=5)
    ids = lm_tiny.tokenizer.encode(TEXT)
    assert [t.id for t in result.tokens] == ids and result.text == TEXT
    sequence = [50256] + ids  # the first token is predicted from <|endoftext|>
    for j, token in enumerate(result.tokens):
        check_against(hf_model, token, sequence[: j + 1])
        assert token.alternatives[0].id == token.top_id and len(token.alternatives) == 5
        assert token.bucket == (0 if token.rank <= 10 else 1 if token.rank <= 100 else 2 if token.rank <= 1000 else 3)


def test_a_long_text_slides_a_window_and_scores_each_token_once_with_its_windows_context(lm_tiny, hf_model):
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)  # 180 tokens, hf_tiny's context is 64
    ids = lm_tiny.tokenizer.encode(text)
    result = inspect(lm_tiny, text, alternatives=2)
    assert len(result.tokens) == len(ids) and result.window == 64
    sequence = [50256] + ids
    passes = list(windows(len(sequence), 64))
    for first_input, first_target, end in passes[1:3]:  # a later pass: the context is its window, not the text's start
        for j in (first_target, end - 1):
            check_against(hf_model, result.tokens[j - 1], sequence[first_input:j])


@pytest.mark.parametrize("n,window", [(2, 64), (65, 64), (66, 64), (500, 64), (300, 7), (10, 1)])
def test_windows_cover_every_target_once_with_at_least_half_a_window_of_context(n, window):
    targets = []
    for first_input, first_target, end in windows(n, window):
        assert end - 1 - first_input <= window  # the inputs fit the model's context
        assert first_target - first_input >= min(first_target, window - max(1, window // 2))
        targets += range(first_target, end)
    assert targets == list(range(1, n))


def test_the_bundled_model_finds_its_own_text_more_expected_than_human_text_and_random_words_least():
    """GLTR's premise, on the bundled model: its samples sit in its top 10 more than held-out Shakespeare does."""
    import gpt2kit

    lm = gpt2kit.load(device="cpu", dtype="float32")
    sample = inspect(lm, lm.generate("ROMEO.\n", length=150, temperature=0.7, seed=1, include_prefix=False)[0])
    human = inspect(lm, HELDOUT_TEXT.read_text()[:1500])  # held out of the bundled model's training
    words = inspect(lm, "quantum giraffe ledger spatula hydrant mortgage velcro pixel tundra accordion " * 3)
    assert sample.shares[0] > human.shares[0] + 0.1 and human.shares[0] > 0.3 > words.shares[0]
    assert sample.mean_log_rank < human.mean_log_rank < words.mean_log_rank
    for r in (sample, human, words):
        assert math.isclose(sum(r.shares), 1.0) and sum(r.buckets) == len(r.tokens)
        for h in r.histograms().values():
            assert sum(h.counts) == len(r.tokens) and len(h.edges) == len(h.counts) + 1


def test_characters_split_across_tokens_show_with_their_last_token(lm_tiny):
    text = "tea 🍵 and 日本語"
    result = inspect(lm_tiny, text, alternatives=0)
    assert result.text == text and len(result.tokens) == len(lm_tiny.tokenizer.encode(text))
    assert "" in [t.text for t in result.tokens]  # the emoji's first bytes: their piece is empty
    assert all(t.alternatives == () for t in result.tokens)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"text": ""}, "empty"),
        ({"alternatives": -1}, "alternatives"),
        ({"alternatives": 101}, "alternatives"),
        ({"context_length": -2}, "context_length"),
    ],
)
def test_mistakes_are_user_errors(lm_tiny, kwargs, message):
    with pytest.raises(UserError, match=message):
        inspect(lm_tiny, **{"text": "Hello", **kwargs})


def test_as_dict_is_json_with_the_summary(lm_tiny):
    d = json.loads(json.dumps(inspect(lm_tiny, TEXT, alternatives=3).as_dict()))
    assert [b["name"] for b in d["buckets"]] == ["top 10", "top 100", "top 1000", "rest"]
    assert sum(b["count"] for b in d["buckets"]) == len(d["tokens"])
    assert set(d["tokens"][0]) == {
        "id",
        "text",
        "rank",
        "prob",
        "top_id",
        "top_text",
        "top_prob",
        "entropy",
        "alternatives",
        "bucket",
    }
    assert set(d["histograms"]) == {"ratio", "entropy"} and d["histograms"]["ratio"]["edges"][-1] == 1.0


def test_renderers(lm_tiny):
    result = inspect(lm_tiny, "a\nb <script>alert(1)</script>", alternatives=3)
    coloured = terminal(result, colour=True)
    assert "\x1b[30;48;5;" in coloured and "\x1b[" not in terminal(result, colour=False)
    assert not re.search(r"\x1b\[30;48;5;\d+m[^\x1b]*\n", coloured)  # no colour runs on past a line's end
    html = page(result)
    passage = re.search(r'<div class="passage">(.*?)</div>', html, re.S).group(1)
    assert "<script" not in html and htmllib.unescape(re.sub(r"<[^>]+>", "", passage)) == result.text
    assert not re.search(r"(src|href)=|@import|url\(", html)  # nothing fetched: readable offline


# --- gpt2kit inspect, in a subprocess (the bundled model) ------------------------------------------------


def test_cli_inspect_json_text_file_and_stdin(tmp_path):
    r = run_cli("inspect", TEXT, "--format", "json", "--alternatives", "3")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["text"] == TEXT and d["model"] == "bundled" and len(d["tokens"][0]["alternatives"]) == 3
    path = tmp_path / "romeo.txt"
    path.write_text(TEXT, encoding="utf-8")
    from_file = json.loads(run_cli("inspect", path, "--format", "json", "--alternatives", "3").stdout)
    from_stdin = json.loads(run_cli("inspect", "-", "--format", "json", "--alternatives", "3", input=TEXT).stdout)
    assert from_file == d == from_stdin


def test_cli_inspect_terminal_report_and_html_page(tmp_path):
    html = tmp_path / "report.html"
    r = run_cli("inspect", TEXT, "--html", html, "--color", "always")
    assert r.returncode == 0, r.stderr
    assert "\x1b[30;48;5;" in r.stdout and "buckets (rank under the model)" in r.stdout
    assert "mean log-rank" in r.stdout and "entropy (nats)" in r.stdout
    rows = [line for line in r.stdout.splitlines() if re.match(r"\s+\d+  ", line)]
    assert len(rows) >= 20  # a row per token
    plain = run_cli("inspect", TEXT)  # not a terminal: no colours
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout
    page_text = html.read_text(encoding="utf-8")
    assert page_text.startswith("<!doctype html>") and "juliet" in page_text.lower()
    assert not re.search(r"(src|href)=|@import|url\(", page_text)


def test_cli_inspect_takes_a_missing_file_name_as_text_and_says_so():
    r = run_cli("inspect", "notes.txt", "--format", "json")
    assert r.returncode == 0 and "notes.txt is not a file" in r.stderr
    assert json.loads(r.stdout)["text"] == "notes.txt"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--alternatives", "-1"], "alternatives must be"),
        (["--context-length", "-1"], "context_length"),
        (["--html", "."], "is a folder"),
        (["--format", "xml"], "invalid choice"),
    ],
)
def test_cli_inspect_mistakes_exit_2_with_one_line(args, message):
    r = run_cli("inspect", TEXT, *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_inspect_an_empty_file_is_a_mistake(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    r = run_cli("inspect", tmp_path / "empty.txt")
    assert r.returncode == 2 and "empty" in r.stderr
