"""Write a GPT-2 as a GGUF file of llama.cpp's `gpt2` architecture, with the `gguf` package (ggml's own writer).

What llama.cpp reads (src/models/gpt2.cpp, convert_hf_to_gguf.py's GPT2Model): tensors named as in
formats/gguf.py, hyperparameters under `gpt2.*`, and the whole byte-level BPE vocabulary under
`tokenizer.ggml.*` with the `gpt-2` pre-tokenizer (GPT-2's split regex), so llama.cpp tokenizes exactly as
gpt2kit does. The head is tied: no `output.weight`, llama.cpp reuses token_embd.
Matrices go in as nn.Linear's (out, in), which is ggml's (ne0=in, ne1=out): no transpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.gguf import ARCH, gguf_name, vocab_lists
from ..tokenizer import EOT
from .source import LICENSE, LICENSE_LINK, LICENSE_NAME, SYNTHETIC_NOTICE, Source

GGUF_TYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values: every matrix's row length must divide by it


def check_type(type: str, n_embd: int | None = None) -> None:
    """Fail before any work on a type llama.cpp cannot take for this model."""
    if type not in GGUF_TYPES:
        raise UserError(f"--type {type!r} is not a GGUF type gpt2kit writes; choose one of {', '.join(GGUF_TYPES)}")
    if type == "q8_0" and n_embd is not None and n_embd % Q8_0_BLOCK:
        raise UserError(
            f"q8_0 needs a width divisible by {Q8_0_BLOCK}, and this model's n_embd is {n_embd}; use --type f16 or f32"
        )


def _file_type(type: str):
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[type]


def _add_hparams(w, source: Source, type: str) -> None:
    from gguf import GGML_QUANT_VERSION

    c = source.model.config
    w.add_name(source.name)
    w.add_description(f"GPT-2 exported by gpt2kit from {source.origin}. {SYNTHETIC_NOTICE}")
    if source.training_run:
        w.add_string("gpt2kit.training_run", source.training_run)
    w.add_license(LICENSE)
    w.add_license_name(LICENSE_NAME)
    w.add_license_link(LICENSE_LINK)
    w.add_block_count(c.n_layer)
    w.add_context_length(c.n_ctx)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)  # GPT-2's MLP is always 4x wide
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(_file_type(type))
    if type == "q8_0":
        w.add_quantization_version(GGML_QUANT_VERSION)


def _add_vocab(w, source: Source) -> None:
    """Every token (padded rows as unused [PADn]), its type, the merges, and <|endoftext|> as BOS and EOS."""
    from gguf import TokenType

    tok = source.tokenizer
    tokens, merges = vocab_lists(Path(tok.source))
    n_vocab = source.model.config.n_vocab  # the embedding's rows; some checkpoints pad past the vocabulary
    tokens = (tokens + [None] * n_vocab)[:n_vocab]
    if tokens[tok.eot_id] is None:
        tokens[tok.eot_id] = EOT  # a vocabulary file without <|endoftext|>: gpt2kit gives it the next id
    types = []
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types.append(TokenType.UNUSED)
        else:
            types.append(TokenType.CONTROL if t.startswith("<|") and t.endswith("|>") else TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # GPT-2's own split regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.eot_id)
    w.add_eos_token_id(tok.eot_id)
    w.add_add_bos_token(False)  # GPT-2 reads a prompt as it is; gpt2kit adds <|endoftext|> only to an empty one
    w.add_add_eos_token(False)


def _add_tensors(w, source: Source, type: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    for key, t in source.model.state_dict().items():
        data = t.detach().float().numpy()
        # llama.cpp keeps vectors (norms, biases) and the position table in f32, as its converter does
        if type == "f32" or data.ndim == 1 or key == "wpe.weight":
            w.add_tensor(gguf_name(key), np.ascontiguousarray(data, dtype=np.float32))
        elif type == "f16":
            w.add_tensor(gguf_name(key), data.astype(np.float16))
        else:
            w.add_tensor(gguf_name(key), quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)


def write_gguf(source: Source, out: Path, *, type: str) -> Path:
    """Write `source` to `out` as a GGUF of tensor type `type`; atomic (a temporary name, then a rename)."""
    from gguf import GGUFWriter

    check_type(type, source.model.config.n_embd)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        w = GGUFWriter(tmp, ARCH)
        _add_hparams(w, source, type)
        _add_vocab(w, source)
        _add_tensors(w, source, type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
