"""`gpt2kit export` to ONNX, run by onnxruntime itself with past key/values, against gpt2kit's fp32 model."""
import importlib.util

import numpy as np
import pytest

from conftest import run_cli
from gpt2kit.export import export
from gpt2kit.formats import build_model, read_checkpoint
from gpt2kit.paths import BUNDLED_DIR
from test_export_gguf import eval_windows, gpt2kit_logits

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime / onnxscript are not installed (pip install 'gpt2kit[export-test]')")


def session(path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_past(config, batch: int) -> dict:
    hs = config.n_embd // config.n_head
    return {f"past_key_values.{i}.{kv}": np.zeros((batch, config.n_head, 0, hs), np.float32)
            for i in range(config.n_layer) for kv in ("key", "value")}


def run(sess, config, ids, mask, positions, past) -> tuple[np.ndarray, dict]:
    out = sess.run(None, {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
                          "position_ids": np.asarray(positions, np.int64), **past})
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
    assert [i.name for i in sess.get_inputs()][:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert [o.name for o in sess.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    shapes = {v.name: v.shape for v in [*sess.get_inputs(), *sess.get_outputs()]}  # Optimum's axis names
    assert shapes["input_ids"] == ["batch_size", "sequence_length"]
    assert shapes["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert shapes["past_key_values.1.value"] == ["batch_size", ck.config.n_head, "past_sequence_length",
                                                 ck.config.n_embd // ck.config.n_head]
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
            got = logits[b, -len(want):] if step == 0 else logits[b, -1:]
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
