"""The `gpt2kit` command.

    common.py      the parser, flags from options dataclasses, model loading, errors -> exit codes
    generate.py    generate, interactive
    info.py        info, convert
    encode.py      encode, decode
    finetune.py    finetune
    merge.py       merge (a LoRA adapter into its base)
    perplexity.py  perplexity
    inspect.py     inspect (GLTR)
    detect.py      detect (a watermark)
    download.py    download, models
    serve.py       serve
    export.py      export

Each command module has `register(subparsers)` and imports the library inside its command
functions, so `gpt2kit --help` loads no PyTorch. Imports point one way: this module -> command
modules -> common -> the library.
"""

from __future__ import annotations

from . import common, detect, download, encode, export, finetune, generate, info, inspect, merge, perplexity, serve

# The order of `gpt2kit --help`.
COMMANDS = (generate, info, encode, finetune, merge, perplexity, inspect, detect, download, serve, export)


def main(argv: list[str] | None = None) -> int:
    return common.run(argv, COMMANDS)
