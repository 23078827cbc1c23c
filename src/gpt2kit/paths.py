"""Every place on disk gpt2kit reads or writes, in one module that imports nothing from the package.

The environment is read at call time (never at import), so a test or a caller that changes
GPT2KIT_HOME sees the change at once.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
ASSETS_DIR = PACKAGE_DIR / "assets"
BUNDLED_DIR = ASSETS_DIR / "bundled"  # the small model shipped inside the package
KERNEL_SOURCES_DIR = PACKAGE_DIR / "kernels"
STATIC_DIR = PACKAGE_DIR / "server" / "static"
CHAT_TEMPLATE = ASSETS_DIR / "chat_template.jinja"  # the default of `serve --chat-template`
# Shakespeare's "The Phoenix and the Turtle" (public domain), which the bundled model held out of its
# training: the text `--dtype auto` checks reduced precisions against fp32 on.
HELDOUT_TEXT = ASSETS_DIR / "heldout.txt"


def home() -> Path:
    """gpt2kit's cache: GPT2KIT_HOME, else ~/.cache/gpt2kit."""
    return Path(os.environ.get("GPT2KIT_HOME", Path.home() / ".cache" / "gpt2kit")).expanduser()


def models_root() -> Path:
    """Downloaded published models, one folder each."""
    return home() / "models"


def kernels_dir() -> Path:
    """Compiled CPU kernels, one library per source hash and instruction set."""
    return home() / "kernels"


def datasets_dir() -> Path:
    """Token datasets encoded from raw text by `finetune`, cached by content."""
    return home() / "datasets"


def tuning_dir() -> Path:
    """Measured per-machine decisions (which CPU path `--dtype auto` takes)."""
    return home() / "tuning"


def tokenizers_dir() -> Path:
    """Vocabularies already turned into tiktoken's ranks, by the content of their files."""
    return home() / "tokenizers"
