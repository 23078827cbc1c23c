"""`gpt2kit export` to GGUF, against llama.cpp itself (llama-cpp-python) and gpt2kit's own GGUF reader."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import run_cli

from gpt2kit.export import export
from gpt2kit.formats import build_model, read_checkpoint
from gpt2kit.paths import ASSETS_DIR, BUNDLED_DIR, HELDOUT_TEXT

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(
    not HAVE_LLAMA, reason="llama-cpp-python is not installed (pip install 'gpt2kit[export-test]')"
)
TYPES = ("f32", "f16", "q8_0")
UNICODE = (
    "emoji 🤖🎉👩‍👩‍👧 flags 🇫🇷 naïve café Ωμέγα Привет 日本語 한국어 عربى \u200b\u00a0\u2028 "
    "I'm here; they'll go, DON'T   spaces\t\ttabs\r\n\n\n 1234567890 ½ 3.14 <|endoftext|> after " + " " * 9 + "x\n"
)


@pytest.fixture(scope="module")
def bundled_ggufs(tmp_path_factory):
    """The bundled model (a real small fine-tuned GPT-2, 6 x 192) exported in each type; f32 through the CLI."""
    d = tmp_path_factory.mktemp("gguf")
    r = run_cli("export", "bundled", d / "f32.gguf", "--type", "f32")
    assert r.returncode == 0, r.stderr
    for t in TYPES[1:]:
        export(None, d / f"{t}.gguf", type=t)
    return {t: d / f"{t}.gguf" for t in TYPES}


@pytest.fixture(scope="module")
def reference():
    """gpt2kit's fp32 model of the bundled weights."""
    ck = read_checkpoint(BUNDLED_DIR)
    return build_model(ck.config, ck.state_dict, ck.path).eval(), ck.tokenizer


def eval_windows(tokenizer, n_ctx: int, total: int = 2000) -> list[list[int]]:
    """`total` tokens of text the bundled model never trained on (its held-out poem, GPT-2's licence, its own
    card), cut into windows that fit its context."""
    text = "\n\n".join(
        p.read_text() for p in (HELDOUT_TEXT, ASSETS_DIR / "LICENSE-GPT2.txt", BUNDLED_DIR / "MODEL_CARD.md")
    )
    ids = tokenizer.encode(text)[:total]
    assert len(ids) == total
    step = n_ctx - 6
    return [ids[i : i + step] for i in range(0, total, step)]


@torch.no_grad()
def gpt2kit_logits(model, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids]))[0].numpy()


def llama(path, **kw):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, n_threads=2, n_batch=256, verbose=False, seed=0, **kw)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


# --- gpt2kit reads what it wrote --------------------------------------------------------------------------


def test_gguf_reads_back_as_the_same_model(hf_tiny, tmp_path):
    """A random fp32 model: f32 comes back bit for bit, f16 and q8_0 as their precision allows."""
    ck = read_checkpoint(hf_tiny)
    ref = build_model(ck.config, ck.state_dict, ck.path).eval()
    ids = ck.tokenizer.encode("The GGUF file holds every tensor of the model, and the vocabulary too.")
    want = gpt2kit_logits(ref, ids)
    for t, tol in (("f32", 0.0), ("f16", 2e-3), ("q8_0", 2e-2)):
        out = export(hf_tiny, tmp_path / f"tiny-{t}.gguf", type=t)
        back = read_checkpoint(out)
        assert back.format == "gguf" and back.config == ck.config
        got = gpt2kit_logits(build_model(back.config, back.state_dict, back.path).eval(), ids)
        assert np.abs(got - want).max() <= tol, (t, np.abs(got - want).max())
    same = read_checkpoint(tmp_path / "tiny-f32.gguf").state_dict
    assert all(torch.equal(same[k], v) for k, v in ck.state_dict.items())


def test_gguf_loads_and_generates_like_any_format(bundled_ggufs):
    """`load` takes a GGUF file like a folder, and q8_0's greedy text stays that of the fp32 weights."""
    import gpt2kit

    lm = gpt2kit.load(bundled_ggufs["q8_0"], device="cpu", dtype="float32")
    assert lm.info["format"] == "gguf" and any("q8_0" in n for n in lm.info["notes"])
    ref = gpt2kit.load(None, device="cpu", dtype="float32")
    kw = dict(length=20, temperature=0, include_prefix=False)
    f32 = gpt2kit.load(bundled_ggufs["f32"], device="cpu", dtype="float32")
    assert f32.generate("ROMEO.", **kw) == ref.generate("ROMEO.", **kw)
    assert len(lm.generate("ROMEO.", **kw)[0]) > 0


def test_metadata_names_the_model_and_carries_the_notice(bundled_ggufs):
    from gguf import GGUFReader

    r = GGUFReader(bundled_ggufs["q8_0"])
    get = lambda k: r.fields[k].contents()  # noqa: E731
    assert get("general.architecture") == "gpt2" and get("general.name") == "gpt2kit-bundled"
    assert "synthetic text" in get("general.description") and get("general.license") == "mit"
    assert "1500 steps" in get("gpt2kit.training_run")
    assert get("tokenizer.ggml.pre") == "gpt-2" and get("tokenizer.ggml.bos_token_id") == 50256
    assert get("tokenizer.ggml.token_type")[50256] == 3  # CONTROL: <|endoftext|> is a special token
    assert {t.name: t.tensor_type.name for t in r.tensors}["blk.0.attn_qkv.weight"] == "Q8_0"


# --- llama.cpp reads what gpt2kit wrote -------------------------------------------------------------------


@needs_llama
def test_llama_cpp_tokenizes_like_gpt2kit(bundled_ggufs, reference):
    from llama_cpp import Llama

    llm = Llama(model_path=str(bundled_ggufs["f16"]), vocab_only=True, verbose=False)
    tokenizer = reference[1]
    for text in (UNICODE, HELDOUT_TEXT.read_text()):
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tokenizer.encode(text)
    assert llm.token_bos() == llm.token_eos() == tokenizer.eot_id


@needs_llama
def test_llama_cpp_f32_logits_match_gpt2kit(bundled_ggufs, reference):
    model, tokenizer = reference
    llm = llama(bundled_ggufs["f32"], logits_all=True)
    ids = eval_windows(tokenizer, model.config.n_ctx)[0]
    diff = np.abs(llama_logits(llm, ids) - gpt2kit_logits(model, ids)).max()
    assert diff < 1e-2, diff


@needs_llama
@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_llama_cpp_reduced_types_agree_on_top1(bundled_ggufs, reference, type):
    model, tokenizer = reference
    llm = llama(bundled_ggufs[type], logits_all=True)
    same = total = 0
    for ids in eval_windows(tokenizer, model.config.n_ctx):
        same += int((llama_logits(llm, ids).argmax(-1) == gpt2kit_logits(model, ids).argmax(-1)).sum())
        total += len(ids)
    assert total == 2000 and same / total >= 0.99, (type, same / total)


@needs_llama
def test_llama_cpp_greedy_continuation_equals_gpt2kit(bundled_ggufs):
    import gpt2kit

    lm = gpt2kit.load(None, device="cpu", dtype="float32")
    llm = llama(bundled_ggufs["f32"])
    prompt = "KING HENRY. Now, by my sceptre,"
    want = lm.generate(prompt, length=40, temperature=0, include_prefix=False, stop_at_eot=False)[0]
    got = []
    for token in llm.generate(lm.tokenizer.encode(prompt), temp=0.0, top_k=1, repeat_penalty=1.0):
        got.append(token)
        if len(got) == 40:
            break
    assert lm.tokenizer.decode(got) == want


# --- mistakes: one line, exit code 2 ----------------------------------------------------------------------


def test_bad_type_unwritable_out_and_wrong_suffix_exit_2(tmp_path):
    cases = [
        ("bundled", tmp_path / "m.gguf", "--type", "q4_k"),
        ("bundled", tmp_path / "no" / "such" / "dir" / "m.gguf"),
        ("bundled", tmp_path / "m.bin"),
    ]
    for args in cases:
        r = run_cli("export", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error" in r.stderr, (args, r.stderr)
    assert not list(tmp_path.iterdir())


def test_non_gpt2_and_corrupt_gguf_are_user_errors(tmp_path, bundled_ggufs):
    from gguf import GGUFWriter

    w = GGUFWriter(tmp_path / "llama.gguf", "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    data = bundled_ggufs["q8_0"].read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) // 3])
    (tmp_path / "header.gguf").write_bytes(data[:200])
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    for name, words in (
        ("llama.gguf", "'llama' architecture"),
        ("truncated.gguf", "GGUF"),
        ("header.gguf", "GGUF"),
        ("garbage.gguf", "GGUF"),
    ):
        r = run_cli("info", tmp_path / name)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (name, r.stderr)
