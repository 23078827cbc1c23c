"""An ONNX model folder that onnxruntime-genai runs as it is: `og.Model(folder)`, its tokenizer, its generator.

    model.onnx (+ model.onnx.data)   export/onnx.py's decoder with past key/values (fp32, or int8 weights)
    genai_config.json                the model's shape and its inputs' and outputs' names, greedy search
    tokenizer.json                   the vocabulary as a byte-level BPE, in the `tokenizers` library's format
    tokenizer_config.json            GPT2Tokenizer, <|endoftext|> as BOS, EOS and padding, no BOS added

onnxruntime-genai's "decoder" model type runs any decoder-only graph whose names its config gives, with a
separate key and value per layer (its "gpt2" type expects the older combined past_{i} tensors).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import durable
from ..config import GPTConfig
from ..formats.gguf import vocab_lists
from ..tokenizer import EOT
from .onnx import write_onnx
from .source import Source

MODEL_FILE = "model.onnx"


def genai_config(config: GPTConfig, eot_id: int) -> dict:
    """genai_config.json: what onnxruntime-genai needs to feed export/onnx.py's graph, and greedy search
    up to the context (a caller's set_search_options changes either)."""
    names = {"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    decoder = {
        "filename": MODEL_FILE,
        "head_size": config.n_embd // config.n_head,
        "hidden_size": config.n_embd,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "num_hidden_layers": config.n_layer,
        "session_options": {"log_id": "gpt2kit", "provider_options": []},
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            **names,
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
    }
    model = {
        "type": "decoder",
        "context_length": config.n_ctx,
        "vocab_size": config.n_vocab,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "decoder": decoder,
    }
    # The graph concatenates each past with the new keys, so the past and the present are separate buffers.
    search = {"do_sample": False, "max_length": config.n_ctx, "num_beams": 1, "past_present_share_buffer": False}
    return {"model": model, "search": search}


def tokenizer_json(vocab_folder: Path, eot_id: int) -> dict:
    """GPT-2's byte-level BPE in the `tokenizers` library's tokenizer.json: the vocabulary files' tokens and
    merges, GPT-2's split regex (ByteLevel with use_regex), no prefix space, <|endoftext|> special."""
    tokens, merges = vocab_lists(vocab_folder)
    vocab = {t: i for i, t in enumerate(tokens) if t is not None}
    vocab.setdefault(EOT, eot_id)  # a vocabulary file without <|endoftext|>: gpt2kit gives it the next id
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = {
        "id": eot_id,
        "content": EOT,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "special": True,
    }
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": model,
    }


def tokenizer_config(config: GPTConfig) -> dict:
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": config.n_ctx,
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "pad_token": EOT,
    }


def write_genai_folder(source: Source, out: Path, *, int8: bool = False) -> Path:
    """Write the folder `out` (new, or an empty folder); it appears whole or not at all."""
    config, eot_id = source.model.config, source.tokenizer.eot_id
    tmp = durable.temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_onnx(source, tmp / MODEL_FILE, int8=int8)
        files = {
            "genai_config.json": genai_config(config, eot_id),
            "tokenizer.json": tokenizer_json(Path(source.tokenizer.source), eot_id),
            "tokenizer_config.json": tokenizer_config(config),
        }
        for name, data in files.items():
            (tmp / name).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty before any work
        durable.replace(tmp, out)  # fsync'd files, then the rename
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
