"""Write the TensorFlow checkpoint fixtures in tests/fixtures/ (run once; needs tensorflow-cpu).

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python scripts/make_tf_fixtures.py

Real TensorFlow writes the checkpoints in the three layouts gpt2kit reads (OpenAI's model folder,
a gpt-2-simple run with Adam slots and two checkpoints, an nshepperd run without hparams.json)
and computes reference logits and greedy tokens with its own ops, saved as expected.npz. The
vocabulary is GPT-2's first 1,000 tokens (256 bytes + 743 merges + <|endoftext|>), to keep the
fixtures small.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "gpt2kit" / "assets"
OUT = ROOT / "tests" / "fixtures"
N_MERGES = 743


def tiny_vocab(folder: Path) -> int:
    encoder = json.loads((ASSETS / "encoder.json").read_text())
    merges = (ASSETS / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    keep = {t: i for t, i in encoder.items() if i < 256 + N_MERGES}
    keep["<|endoftext|>"] = 256 + N_MERGES
    (folder / "encoder.json").write_text(json.dumps(keep, ensure_ascii=False))
    (folder / "vocab.bpe").write_text("\n".join(merges[: 1 + N_MERGES]) + "\n", encoding="utf-8")
    return len(keep)


def make_variables(hp, rng, adam=False):
    """GPT-2's variables under OpenAI's names, conv1d weights shaped (1, in, out)."""
    C = hp["n_embd"]
    values = {"model/wte": rng.normal(0, 0.2, (hp["n_vocab"], C)), "model/wpe": rng.normal(0, 0.05, (hp["n_ctx"], C))}
    for i in range(hp["n_layer"]):
        p = f"model/h{i}/"
        for ln in ("ln_1", "ln_2"):
            values[p + ln + "/g"] = 1 + rng.normal(0, 0.1, C)
            values[p + ln + "/b"] = rng.normal(0, 0.1, C)
        for name, nx, nf in (
            ("attn/c_attn", C, 3 * C),
            ("attn/c_proj", C, C),
            ("mlp/c_fc", C, 4 * C),
            ("mlp/c_proj", 4 * C, C),
        ):
            values[p + name + "/w"] = rng.normal(0, 0.15, (1, nx, nf))
            values[p + name + "/b"] = rng.normal(0, 0.05, nf)
    values["model/ln_f/g"] = 1 + rng.normal(0, 0.1, C)
    values["model/ln_f/b"] = rng.normal(0, 0.1, C)
    return {k: v.astype(np.float32) for k, v in values.items()}


def tf_forward(hp, v, tokens):
    """GPT-2's forward pass written with TF ops, independent of gpt2kit's PyTorch code.

    One graph for any sequence length: `tokens` is a placeholder fed at run time.
    """
    T = tf.shape(tokens)[0]
    C, H = hp["n_embd"], hp["n_head"]

    def norm(x, g, b):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * g + b

    def conv(x, w, b):
        return tf.matmul(x, w[0]) + b

    x = tf.gather(v["model/wte"], tokens) + v["model/wpe"][:T]
    mask = tf.linalg.band_part(tf.ones([T, T]), -1, 0)
    for i in range(hp["n_layer"]):
        p = f"model/h{i}/"
        a = conv(norm(x, v[p + "ln_1/g"], v[p + "ln_1/b"]), v[p + "attn/c_attn/w"], v[p + "attn/c_attn/b"])
        q, k, val = tf.split(a, 3, axis=-1)

        def heads(t):
            return tf.transpose(tf.reshape(t, [T, H, C // H]), [1, 0, 2])

        q, k, val = heads(q), heads(k), heads(val)
        w = tf.matmul(q, k, transpose_b=True) / np.sqrt(C // H)
        w = w * mask - 1e10 * (1 - mask)
        y = tf.reshape(tf.transpose(tf.matmul(tf.nn.softmax(w, axis=-1), val), [1, 0, 2]), [T, C])
        x = x + conv(y, v[p + "attn/c_proj/w"], v[p + "attn/c_proj/b"])
        m = conv(norm(x, v[p + "ln_2/g"], v[p + "ln_2/b"]), v[p + "mlp/c_fc/w"], v[p + "mlp/c_fc/b"])
        m = 0.5 * m * (1 + tf.tanh(np.sqrt(2 / np.pi) * (m + 0.044715 * tf.pow(m, 3))))
        x = x + conv(m, v[p + "mlp/c_proj/w"], v[p + "mlp/c_proj/b"])
    x = norm(x, v["model/ln_f/g"], v["model/ln_f/b"])
    return tf.matmul(x, v["model/wte"], transpose_b=True)


def write_checkpoint(folder: Path, hp, values, prefix: str, step=None, adam=False, extra_steps=()):
    """Save `values` with tf.compat.v1.train.Saver; returns TF's logits and greedy tokens."""
    tf.compat.v1.reset_default_graph()
    tvars = {k: tf.compat.v1.get_variable(k, shape=val.shape, dtype=tf.float32) for k, val in values.items()}
    # Values are fed through placeholders, not baked into the graph as constants: keeps .meta small.
    feeds = {k: tf.compat.v1.placeholder(tf.float32, val.shape) for k, val in values.items()}
    assigns = [tvars[k].assign(feeds[k]) for k in values]
    ids = np.array([5, 300, 17, 256, 900, 42, 7, 600], np.int32)
    window = tf.compat.v1.placeholder(tf.int32, [None])
    logits = tf_forward(hp, tvars, window)
    if adam:  # gpt-2-simple and nshepperd save the optimiser's slots too; readers must skip them
        tf.compat.v1.train.AdamOptimizer(1e-4).minimize(tf.reduce_mean(logits), var_list=list(tvars.values()))
    saver = tf.compat.v1.train.Saver(max_to_keep=5)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(assigns, {feeds[k]: v for k, v in values.items()})
        ref = sess.run(logits, {window: ids})
        seq = list(ids)
        for _ in range(8):  # greedy continuation, by TF, recomputing the whole prefix each time
            out = sess.run(logits, {window: np.array(seq, np.int32)})
            seq.append(int(out[-1].argmax()))
        saver.save(sess, str(folder / prefix), global_step=step)
    return ids, ref, np.array(seq[len(ids) :])


def main():
    for name in ("openai_tiny", "gpt2_simple_run", "nshepperd_run"):
        shutil.rmtree(OUT / name, ignore_errors=True)
    rng = np.random.default_rng(0)
    # 1. OpenAI's layout (models/124M as download_model.py writes it).
    openai = OUT / "openai_tiny"
    openai.mkdir(parents=True)
    n_vocab = tiny_vocab(openai)
    hp = {"n_vocab": n_vocab, "n_ctx": 32, "n_embd": 64, "n_head": 4, "n_layer": 2}
    (openai / "hparams.json").write_text(json.dumps(hp, indent=2))
    ids, logits, greedy = write_checkpoint(openai, hp, make_variables(hp, rng), "model.ckpt")
    np.savez(openai / "expected.npz", ids=ids, logits=logits, greedy=greedy)
    # 2. A gpt-2-simple run: two checkpoints with Adam slots; `checkpoint` names the newest.
    run = OUT / "gpt2_simple_run" / "run1"
    run.mkdir(parents=True)
    tiny_vocab(run)
    (run / "hparams.json").write_text(json.dumps(hp, indent=2))
    old = make_variables(hp, rng)
    new = make_variables(hp, rng)
    ids_o, logits_o, greedy_o = write_checkpoint(run, hp, old, "model", step=10, adam=True)
    ids_n, logits_n, greedy_n = write_checkpoint(run, hp, new, "model", step=20, adam=True)
    (run / "counter").write_text("20")
    np.savez(run / "expected.npz", ids=ids_n, logits=logits_n, greedy=greedy_n, logits_10=logits_o, greedy_10=greedy_o)
    # 3. An nshepperd run: no hparams.json (sizes inferred; 64-wide heads as in every published GPT-2).
    nsh = OUT / "nshepperd_run" / "run1"
    nsh.mkdir(parents=True)
    tiny_vocab(nsh)
    hp1 = {**hp, "n_head": 1}
    ids1, logits1, greedy1 = write_checkpoint(nsh, hp1, make_variables(hp1, rng), "model", step=5, adam=True)
    (nsh / "counter").write_text("5")
    np.savez(nsh / "expected.npz", ids=ids1, logits=logits1, greedy=greedy1)
    print("wrote", sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file()), file=sys.stderr)


if __name__ == "__main__":
    main()
