import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory) -> Path:
    """A small random GPT2LMHeadModel saved by transformers itself (full GPT-2 vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_tiny(hf_tiny):
    import gpt2kit

    return gpt2kit.load(hf_tiny, device="cpu", dtype="float32")


def run_cli(*args, input=None, cwd=None, env=None, timeout=300):
    """The real `gpt2kit` program in a subprocess."""
    full_env = {**os.environ, "GPT2KIT_OFFLINE": "1", **(env or {})}
    # input="" rather than inheriting stdin: a piped stdin is read as a prompt, and must not hang
    return subprocess.run(
        [sys.executable, "-m", "gpt2kit", *map(str, args)],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture(scope="session", autouse=True)
def _private_cache_for_the_session(tmp_path_factory):
    """Session fixtures (models loaded once, which build the CPU kernels) use the private cache too."""
    old = os.environ.get("GPT2KIT_HOME")
    os.environ["GPT2KIT_HOME"] = str(tmp_path_factory.getbasetemp() / "gpt2kit-home")
    yield
    if old is None:
        os.environ.pop("GPT2KIT_HOME", None)
    else:
        os.environ["GPT2KIT_HOME"] = old


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's ~/.cache/gpt2kit."""
    monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path_factory.getbasetemp() / "gpt2kit-home"))
