"""One boundary for every on-disk format: detect what a path holds and load it.

    read.py         a model name or path -> a Checkpoint (config, weights in gpt2kit's names, tokenizer)
    build.py        a Checkpoint's tensors -> a GPT, every name and shape checked; convert to a Hugging Face folder
    runs.py         gpt2kit's training runs: step-N folders and the `latest` pointer
    huggingface.py  openai_tf.py  tf_checkpoint.py  gguf.py    one file per format
    mapped.py       weights read through a memory map, and giving their pages back

Only re-exports: nothing downstream needs to know which module, or which format, a name comes from.
"""

from .build import build_model, convert, write_vocab
from .gguf import gguf_in_folder, is_gguf_file, load_gguf
from .huggingface import is_hf_folder, load_hf, read_hf_config, save_hf
from .mapped import release
from .openai_tf import is_tf_folder, load_tf, no_such_checkpoint, read_hparams
from .read import (
    BUNDLED_NAME,
    FORMATS_HELP,
    MODEL_FILES,
    WEIGHT_SUFFIXES,
    Checkpoint,
    bundled_model,
    detect_format,
    local_model,
    read_checkpoint,
    what_is_there,
)
from .runs import RUN_POINTER, newest_step, resolve_run_folder, run_steps

__all__ = [
    "Checkpoint",
    "read_checkpoint",
    "build_model",
    "convert",
    "newest_step",
    "release",
    "save_hf",
    "write_vocab",
    "FORMATS_HELP",
    "BUNDLED_NAME",
    "MODEL_FILES",
    "WEIGHT_SUFFIXES",
    "RUN_POINTER",
    "bundled_model",
    "detect_format",
    "local_model",
    "what_is_there",
    "read_hf_config",
    "read_hparams",
    "resolve_run_folder",
    "run_steps",
    "gguf_in_folder",
    "is_gguf_file",
    "load_gguf",
    "is_hf_folder",
    "load_hf",
    "is_tf_folder",
    "load_tf",
    "no_such_checkpoint",
]
