"""The small model that ships inside the package: used by default, offline, and it has learned its texts."""

import json
import math

from conftest import FIXTURES, run_cli

import gpt2kit
from gpt2kit.paths import BUNDLED_DIR

HELD_OUT = FIXTURES / "heldout_phoenix_and_the_turtle.txt"  # a poem the model never trained on


def test_generate_without_model_uses_the_bundled_one():
    r = run_cli("generate", "ROMEO.", "--length", "30", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO.") and len(r.stdout) > 40
    notes = [line for line in r.stderr.splitlines() if "bundled" in line]
    assert len(notes) == 1 and "124M" in notes[0]


def test_load_without_a_name():
    lm = gpt2kit.load(device="cpu")
    assert lm.info["bundled"] and lm.config.n_vocab == 50257
    figures = json.loads((BUNDLED_DIR / "training.json").read_text())
    assert lm.model.num_params() == figures["parameters"]
    assert (BUNDLED_DIR / "model.safetensors").stat().st_size <= 30e6


def test_it_has_learned_shakespeare():
    r = run_cli("perplexity", HELD_OUT)
    assert r.returncode == 0, r.stderr
    loss = float(r.stdout.split("loss ")[1].split()[0])
    assert loss < 6.5, r.stdout  # a model that learned nothing scores ln(50257) = 10.8


def test_model_card_figures_are_the_measured_ones():
    card = (BUNDLED_DIR / "MODEL_CARD.md").read_text()
    figures = json.loads((BUNDLED_DIR / "training.json").read_text())
    assert f"{figures['val_loss']:.3f} nats/token, perplexity {figures['val_ppl']:.1f}" in card
    assert f"{figures['parameters']:,} parameters" in card
    assert abs(math.exp(figures["val_loss"]) - figures["val_ppl"]) < 0.1
    assert "synthetic" in card and (BUNDLED_DIR / "loss.png").is_file()


def test_finetune_without_model_starts_from_the_bundled_one(tmp_path):
    (tmp_path / "mine.txt").write_text("My own words, over and over. " * 50)
    final = gpt2kit.finetune(
        dataset=[tmp_path / "mine.txt"],
        checkpoint_dir=tmp_path / "ck",
        steps=2,
        batch_size=1,
        context_length=64,
        progress=False,
    )
    assert json.loads((final / "config.json").read_text())["n_embd"] == gpt2kit.load(device="cpu").config.n_embd
