"""`gpt2kit export` to ONNX, run by onnxruntime itself with past key/values, against gpt2kit's fp32 model."""

import importlib.util

import numpy as np
import pytest
from conftest import FIXTURES, run_cli
from test_export_gguf import eval_windows, gpt2kit_logits

import gpt2kit
from gpt2kit.export import export
from gpt2kit.formats import build_model, read_checkpoint
from gpt2kit.paths import BUNDLED_DIR

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime / onnxscript are not installed (pip install 'gpt2kit[export-test]')",
)


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_past(config, batch: int) -> dict:
    hs = config.n_embd // config.n_head
    return {
        f"past_key_values.{i}.{kv}": np.zeros((batch, config.n_head, 0, hs), np.float32)
        for i in range(config.n_layer)
        for kv in ("key", "value")
    }


def run(sess, config, ids, mask, positions, past) -> tuple[np.ndarray, dict]:
    out = sess.run(
        None,
        {
            "input_ids": np.asarray(ids, np.int64),
            "attention_mask": np.asarray(mask, np.int64),
            "position_ids": np.asarray(positions, np.int64),
            **past,
        },
    )
    names = [o.name for o in sess.get_outputs()]
    presents = {n.replace("present.", "past_key_values."): v for n, v in zip(names[1:], out[1:])}
    return out[0], presents


def test_onnx_decodes_with_past_like_gpt2kit(hf_tiny, tmp_path):
    """Two left-padded prompts of different lengths, then 16 greedy steps fed one token at a time through the
    presents: every real position's logits equal gpt2kit's fp32 forward over the unpadded row."""
    ck = read_checkpoint(hf_tiny)
    model = build_model(ck.config, ck.state_dict, ck.path).eval()
    out = export(hf_tiny, tmp_path / "tiny.onnx")
    sess = session(out)
    assert [i.name for i in sess.get_inputs()][:4] == [
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values.0.key",
    ]
    assert [o.name for o in sess.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    shapes = {v.name: v.shape for v in [*sess.get_inputs(), *sess.get_outputs()]}  # Optimum's axis names
    assert shapes["input_ids"] == ["batch_size", "sequence_length"]
    assert shapes["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert shapes["past_key_values.1.value"] == [
        "batch_size",
        ck.config.n_head,
        "past_sequence_length",
        ck.config.n_embd // ck.config.n_head,
    ]
    assert shapes["logits"] == ["batch_size", "sequence_length", ck.config.n_vocab]
    rows = [ck.tokenizer.encode("Past keys and values carry the prompt forward"), ck.tokenizer.encode("Short one")]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = np.maximum(mask.cumsum(1) - 1, 0)  # as transformers.js computes them from the mask
    logits, past = run(sess, ck.config, ids, mask, positions, empty_past(ck.config, 2))
    for step in range(17):
        for b, row in enumerate(rows):
            want = gpt2kit_logits(model, row)
            got = logits[b, -len(want) :] if step == 0 else logits[b, -1:]
            diff = np.abs(got - (want if step == 0 else want[-1:])).max()
            assert diff < 1e-4, (step, b, diff)
            row.append(int(want[-1].argmax()))
        if step == 16:
            break
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        nxt = np.array([[r[-1]] for r in rows])
        logits, past = run(sess, ck.config, nxt, mask, positions[:, -1:] + 1 + step, past)


def test_int8_agrees_on_top1(tmp_path):
    """The bundled model (a real small fine-tune) in int8 picks gpt2kit fp32's top token at >= 99% of 2,000 positions."""
    r = run_cli("export", "bundled", tmp_path / "int8.onnx", "--int8", timeout=1200)
    assert r.returncode == 0, r.stderr
    ck = read_checkpoint(BUNDLED_DIR)
    model = build_model(ck.config, ck.state_dict, ck.path).eval()
    sess = session(tmp_path / "int8.onnx")
    same = total = 0
    for ids in eval_windows(ck.tokenizer, ck.config.n_ctx):
        n = len(ids)
        logits, _ = run(sess, ck.config, [ids], np.ones((1, n)), [np.arange(n)], empty_past(ck.config, 1))
        same += int((logits[0].argmax(-1) == gpt2kit_logits(model, ids).argmax(-1)).sum())
        total += n
    assert total == 2000 and same / total >= 0.99, same / total


def test_onnx_option_mistakes_exit_2(tmp_path):
    for args in (("--type", "q8_0"), ("--int8",)):
        out = tmp_path / ("m.onnx" if args[0] == "--type" else "m.gguf")
        r = run_cli("export", "bundled", out, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def genai_folder(tmp_path_factory):
    """`gpt2kit export bundled FOLDER`: the bundled model (a real small fine-tune) as an onnxruntime-genai folder."""
    out = tmp_path_factory.mktemp("genai") / "bundled-genai"
    r = run_cli("export", "bundled", out, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "genai_config.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    return out


TEXTS = [
    (FIXTURES / "heldout_phoenix_and_the_turtle.txt").read_text(encoding="utf-8"),
    "  leading spaces, tabs\tand\n\nnew lines; it's we'll they've 1234567 émigré naïve 東京 😀 <|endoftext|> after",
]


def test_the_folders_tokenizer_json_is_gpt2s_for_the_tokenizers_library(genai_folder):
    """Hugging Face's `tokenizers` (Rust) reads the exported tokenizer.json and splits text as gpt2kit does."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(genai_folder / "tokenizer.json"))
    ours = read_checkpoint(BUNDLED_DIR).tokenizer
    for text in TEXTS:
        ids = ours.encode(text)
        assert hf.encode(text).ids == ids
        assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids)


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None,
    reason="onnxruntime-genai is not installed (pip install 'gpt2kit[export-test]')",
)
def test_onnxruntime_genai_runs_the_folder_as_gpt2kit_does(genai_folder):
    """onnxruntime-genai opens the folder as it is: its tokenizer gives gpt2kit's ids, and greedy search over
    two prompts of different lengths in one batch (it pads them) gives gpt2kit's fp32 greedy tokens."""
    import onnxruntime_genai as og

    lm = gpt2kit.load(None, device="cpu", dtype="float32")
    model = og.Model(str(genai_folder))
    tok = og.Tokenizer(model)
    for text in TEXTS:
        assert [int(i) for i in tok.encode(text)] == lm.tokenizer.encode(text)
    prompts = ["Once upon a time", "The meaning of life is not what we"]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=40, batch_size=2)
    generator = og.Generator(model, params)
    generator.append_tokens(tok.encode_batch(prompts))
    while not generator.is_done():
        generator.generate_next_token()
    for i, prompt in enumerate(prompts):
        ids = lm.tokenizer.encode(prompt)
        got = [int(t) for t in generator.get_sequence(i) if t != lm.tokenizer.eot_id]  # without its padding
        assert got[: len(ids)] == ids
        new = got[len(ids) :]
        want = lm.tokenizer.encode(lm.generate(prompt, length=len(new), temperature=0, include_prefix=False)[0])
        assert len(new) >= 20 and new == want[: len(new)], (prompt, tok.decode(got))


def test_an_export_folder_that_is_not_empty_is_refused_before_work(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for out in (tmp_path / "taken", tmp_path / "model.v2"):
        r = run_cli("export", "bundled", out)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "taken"
    ]
