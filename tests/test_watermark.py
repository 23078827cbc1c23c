"""The watermark against transformers' own (the reference): the same processed logits, the same green lists
under greedy decoding, and detection both ways; then `gpt2kit detect` in a subprocess."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli
from transformers import WatermarkDetector, WatermarkingConfig
from transformers.generation.logits_process import WatermarkLogitsProcessor

from gpt2kit.errors import UserError
from gpt2kit.options import SamplingSettings
from gpt2kit.paths import HELDOUT_TEXT
from gpt2kit.provenance.watermark import GPT2_VOCAB, Watermark, detect, green_mask

KEY = 15485863  # transformers' default hashing key


def row(tokens, seed=0):
    """A stand-in for the engine's Sequence: what the stage reads."""
    g = torch.Generator()
    g.manual_seed(seed)
    return SimpleNamespace(ids=list(tokens), tokens=list(tokens), generator=g, state={})


def settings(key=KEY, gamma=0.25, delta=2.0, width=1, **kw):
    return SamplingSettings(
        watermark_key=key, watermark_gamma=gamma, watermark_delta=delta, watermark_context_width=width, **kw
    )


def hf_config(gamma=0.25, delta=2.0, width=1, key=KEY):
    return WatermarkingConfig(
        greenlist_ratio=gamma, bias=delta, hashing_key=key, seeding_scheme="lefthash", context_width=width
    )


@pytest.mark.parametrize("key,gamma,delta,width", [(KEY, 0.25, 2.0, 1), (7, 0.5, 0.75, 1), (2**40 + 3, 0.1, 5.0, 3)])
def test_processed_logits_equal_transformers_processor(key, gamma, delta, width):
    torch.manual_seed(1)
    ids = torch.randint(0, GPT2_VOCAB, (4, 6))
    logits = torch.randn(4, GPT2_VOCAB) * 3
    logits[1, :100] = float("-inf")  # a row top-k already cut
    theirs = WatermarkLogitsProcessor(
        vocab_size=GPT2_VOCAB, device="cpu", greenlist_ratio=gamma, bias=delta, hashing_key=key, context_width=width
    )(ids, logits.clone())
    s = settings(key, gamma, delta, width)
    ours = Watermark().apply(logits.clone(), s, [row(r.tolist()) for r in ids])
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, logits)
    changed = (ours != logits).sum(-1)  # the green list, less what was -inf already
    assert changed[0] == int(GPT2_VOCAB * gamma)


def test_rows_shorter_than_the_context_width_are_left_alone_as_transformers_leaves_them():
    logits = torch.randn(2, GPT2_VOCAB)
    out = Watermark().apply(logits.clone(), settings(width=3), [row([5, 6]), row([1, 2, 3])])
    assert torch.equal(out[0], logits[0]) and not torch.equal(out[1], logits[1])
    theirs = WatermarkLogitsProcessor(vocab_size=GPT2_VOCAB, device="cpu", context_width=3)(
        torch.tensor([[5, 6]]), logits[:1].clone()
    )
    assert torch.equal(theirs, logits[:1])


def test_the_stage_is_on_only_with_a_key_and_leaves_wider_logits_past_the_vocabulary():
    stage = Watermark()
    assert not stage.wants(SamplingSettings()) and stage.wants(settings())
    logits = torch.zeros(1, GPT2_VOCAB + 47)  # a vocabulary padded to a multiple of 64
    out = stage.apply(logits, settings(), [row([50256])])
    assert out[0, GPT2_VOCAB:].eq(0).all() and out[0].sum() == 2.0 * int(GPT2_VOCAB * 0.25)
    green = torch.from_numpy(green_mask(KEY, 0.25, 50256))
    assert out[0, :GPT2_VOCAB][green].eq(2.0).all() and green.sum() == int(GPT2_VOCAB * 0.25)


def generate(model_logits, prompt, n, s, seed):
    """A plain token loop (the engine's stand-in): temperature, then the watermark last, as transformers orders them."""
    seq, stage = row(prompt, seed), Watermark()
    for _ in range(n):
        logits = model_logits(seq.tokens)  # (1, V)
        if s.temperature > 0:
            logits = logits / s.temperature
        if stage.wants(s):
            logits = stage.apply(logits, s, [seq])
        if s.temperature == 0:
            token = int(logits.argmax(-1))
        else:
            token = int(torch.multinomial(logits.softmax(-1)[0], 1, generator=seq.generator))
        seq.tokens.append(token)
    return seq.tokens[len(prompt) :]


def logits_of(lm):
    @torch.inference_mode()
    def last(tokens):
        return lm.model(torch.tensor([tokens[-lm.config.n_ctx :]]))[0, -1:].float()

    return last


@pytest.fixture(scope="module")
def hf_model(hf_tiny):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_tiny).eval()


def their_detection(hf_model, tokens, **kw):
    detector = WatermarkDetector(model_config=hf_model.config, device="cpu", watermarking_config=hf_config(**kw))
    return detector(torch.tensor([tokens]), z_threshold=4.0, return_dict=True)


@pytest.fixture(scope="module")
def bundled():
    """The bundled model, in gpt2kit and in transformers (its folder is Hugging Face's format)."""
    from transformers import GPT2LMHeadModel

    import gpt2kit
    from gpt2kit.paths import BUNDLED_DIR

    hf_model = GPT2LMHeadModel.from_pretrained(BUNDLED_DIR, dtype=torch.float32).eval()
    return gpt2kit.load(device="cpu", dtype="float32"), hf_model


def test_greedy_watermarked_text_equals_transformers(bundled):
    """The issue's target: the green lists are the same, so greedy decoding picks the same tokens."""
    lm, hf_model = bundled
    prompt = lm.tokenizer.encode("ROMEO.\n")
    ours = generate(logits_of(lm), prompt, 40, settings(temperature=0), seed=0)
    out = hf_model.generate(
        torch.tensor([prompt]),
        watermarking_config=hf_config(),
        do_sample=False,
        max_new_tokens=40,
        min_new_tokens=40,
        pad_token_id=50256,
    )
    assert ours == out[0, len(prompt) :].tolist()
    plain = generate(logits_of(lm), prompt, 40, settings(key=None, temperature=0), seed=0)
    assert plain != ours  # the watermark changed the text
    assert detect(ours, key=KEY).z > 4 > detect(plain, key=KEY).z


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_transformers_detects_text_marked_here_and_agrees_on_z(lm_tiny, hf_model, temperature):
    prompt = lm_tiny.tokenizer.encode("The")
    ours = generate(logits_of(lm_tiny), prompt, 80, settings(temperature=temperature), seed=3)
    theirs = their_detection(hf_model, ours)
    found = detect(ours, key=KEY)
    assert theirs.prediction[0] and found.watermarked
    assert found.z == pytest.approx(theirs.z_score[0], abs=1e-9)
    assert (found.green, found.scored) == (theirs.num_green_tokens[0], theirs.num_tokens_scored[0])
    plain = generate(logits_of(lm_tiny), prompt, 80, settings(key=None, temperature=max(temperature, 1.0)), seed=3)
    assert not their_detection(hf_model, plain).prediction[0] and not detect(plain, key=KEY).watermarked


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("gamma,delta,width", [(0.25, 2.0, 1), (0.5, 4.0, 2)])
def test_detect_finds_transformers_watermark(bundled, do_sample, gamma, delta, width):
    hf_model = bundled[1]
    torch.manual_seed(0)
    prompt = torch.tensor([[50256, 33676, 4720, 13, 198]])  # <|endoftext|>ROMEO.\n
    out = hf_model.generate(
        prompt,
        watermarking_config=hf_config(gamma, delta, width),
        do_sample=do_sample,
        max_new_tokens=100,
        min_new_tokens=100,
        pad_token_id=50256,
    )
    tokens = out[0, prompt.size(1) :].tolist()
    found = detect(tokens, key=KEY, gamma=gamma, context_width=width)
    theirs = their_detection(hf_model, tokens, gamma=gamma, delta=delta, width=width)
    assert found.watermarked and theirs.prediction[0]
    assert found.z == pytest.approx(theirs.z_score[0], abs=1e-9) and found.z > 4
    assert found.p_value < 1e-4
    assert not detect(tokens, key=KEY + 1, gamma=gamma, context_width=width).watermarked  # another key: no


@pytest.mark.parametrize("width", [1, 3])
def test_ignoring_repeated_ngrams_counts_as_transformers_does(hf_model, width):
    """A text that loops: each distinct (context, token) run once, as WatermarkDetector(ignore_repeated_ngrams=True)
    scores it; and every repeat counted without the option, as transformers' default does."""
    loop = [464, 3290, 318, 257, 1332, 13] * 12 + [1544, 318, 922, 290]
    for ignore in (True, False):
        theirs = WatermarkDetector(
            model_config=hf_model.config,
            device="cpu",
            watermarking_config=hf_config(width=width),
            ignore_repeated_ngrams=ignore,
        )(torch.tensor([loop]), z_threshold=4.0, return_dict=True)
        ours = detect(loop, key=KEY, context_width=width, ignore_repeated_ngrams=ignore)
        assert ours.scored == int(theirs.num_tokens_scored[0]) and ours.green == int(theirs.num_green_tokens[0])
        assert ours.z == pytest.approx(float(theirs.z_score[0]), rel=1e-6)
    assert detect(loop, key=KEY, ignore_repeated_ngrams=True).scored == 6 + 4  # the loop's pairs once, then the tail


def test_a_leading_endoftext_is_not_scored_as_transformers_drops_it():
    tokens = [50256, 464, 3290, 318, 257]
    assert detect(tokens, key=KEY).scored == 3
    assert detect(tokens[1:], key=KEY).scored == 3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"key": None}, "needs the watermark key"),
        ({"key": 0}, "watermark_key must be"),
        ({"key": KEY, "gamma": 1.0}, "watermark_gamma"),
        ({"key": KEY, "context_width": 0}, "watermark_context_width"),
        ({"key": KEY, "z_threshold": float("nan")}, "z_threshold"),
    ],
)
def test_detect_mistakes_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        detect([464, 3290, 318], **kwargs)


def test_too_few_tokens_and_foreign_ids_are_user_errors():
    with pytest.raises(UserError, match="detection scores those after the first 2"):
        detect([464, 3290], key=KEY, context_width=2)
    with pytest.raises(UserError, match="not in the vocabulary"):
        detect([464, 60000], key=KEY)


@pytest.mark.parametrize(
    "field,value",
    [
        ("watermark_delta", 0.0),
        ("watermark_delta", 101.0),
        ("watermark_gamma", 0.0),
        ("watermark_key", -5),
        ("watermark_key", 2**64),
    ],
)
def test_sampling_settings_refuse_watermarks_out_of_range(field, value):
    with pytest.raises(UserError, match=field):
        SamplingSettings(**{field: value})


# --- gpt2kit detect, in a subprocess -------------------------------------------------------------------


@pytest.fixture(scope="module")
def marked_file(tmp_path_factory):
    """200 tokens of the bundled model at temperature 1.0, watermarked (δ 2, γ 0.25), as text in a file."""
    import gpt2kit

    lm = gpt2kit.load(device="cpu", dtype="float32")
    prompt = lm.tokenizer.encode("ROMEO.\n")
    tokens = generate(logits_of(lm), prompt, 200, settings(key=42, temperature=1.0), seed=5)
    path = tmp_path_factory.mktemp("detect") / "marked.txt"
    path.write_text(lm.tokenizer.decode(tokens), encoding="utf-8")
    return path


def test_cli_detect_says_watermarked_with_exit_0(marked_file):
    r = run_cli("detect", marked_file, "--watermark-key", "42")
    assert r.returncode == 0, r.stderr
    verdict, z_line, _, _ = r.stdout.splitlines()
    assert verdict == "watermarked" and float(z_line.split()[1]) > 4
    r = run_cli("detect", marked_file, "--watermark-key", "42", "--format", "json")
    found = json.loads(r.stdout)
    assert r.returncode == 0 and found["watermarked"] and found["z"] > 4 and found["p_value"] < 1e-4


def test_cli_detect_can_count_each_repeated_ngram_once(tmp_path):
    loop = tmp_path / "loop.txt"
    loop.write_text("and on and on " * 60, encoding="utf-8")
    every = json.loads(run_cli("detect", loop, "--watermark-key", "42", "--format", "json").stdout)
    once = json.loads(
        run_cli("detect", loop, "--watermark-key", "42", "--format", "json", "--ignore-repeated-ngrams").stdout
    )
    assert once["scored"] < 10 < every["scored"]  # a handful of distinct pairs, against every token


def test_cli_detect_exit_1_for_human_text_and_for_another_key(marked_file):
    r = run_cli("detect", HELDOUT_TEXT, "--watermark-key", "42")
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[0] == "not watermarked"
    assert run_cli("detect", marked_file, "--watermark-key", "43").returncode == 1
    assert run_cli("detect", "-", "--watermark-key", "42", input=HELDOUT_TEXT.read_text()).returncode == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--watermark-key", "0"], "watermark_key must be"),
        (["--watermark-key", "42", "--watermark-gamma", "1.5"], "watermark_gamma"),
        ([], "--watermark-key"),
    ],
)
def test_cli_detect_mistakes_exit_2_with_one_line(marked_file, args, message):
    r = run_cli("detect", marked_file, *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_detect_refuses_missing_files_and_empty_text(tmp_path):
    r = run_cli("detect", tmp_path / "nope.txt", "--watermark-key", "42")
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty.txt").write_text("")
    r = run_cli("detect", tmp_path / "empty.txt", "--watermark-key", "42")
    assert r.returncode == 2 and "0 token(s)" in r.stderr


def test_detect_loads_no_model(marked_file):
    code = (
        "import contextlib, io, sys\nfrom gpt2kit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['detect', {str(marked_file)!r}, '--watermark-key', '42']) == 0\n"
        "print([m for m in ('gpt2kit.lm', 'gpt2kit.model', 'gpt2kit.formats', 'safetensors') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
