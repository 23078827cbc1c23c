"""GGUF files of llama.cpp's `gpt2` architecture (f32, f16, q8_0 and any type the `gguf` package dequantizes).

llama.cpp names GPT-2's tensors its own way (token_embd, blk.N.attn_qkv, ...) and stores every matrix as
ggml's (ne0=in, ne1=out), which numpy reads as (out, in): nn.Linear's layout, so our weights need no
transpose (Hugging Face's Conv1D (in, out) does; export/gguf.py writes ours as they are). The output head
is tied to token_embd, as in GPT-2; llama.cpp duplicates token_embd when a file has no `output.weight`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from ..config import GPTConfig, MalformedConfig
from ..errors import UserError
from ..tokenizer import Tokenizer, gpt2_tokenizer

ARCH = "gpt2"
MAGIC = b"GGUF"
# gpt2kit (GPT-2's own) name -> llama.cpp's; per block the part after "h.N." -> the part after "blk.N.".
TOP_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TIED_HEAD = "output.weight"  # written by some converters; gpt2kit ties the head to wte, as GPT-2 does


def gguf_name(key: str) -> str:
    """'h.3.attn.c_attn.weight' -> 'blk.3.attn_qkv.weight'."""
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    _, layer, rest = key.split(".", 2)  # "h", "3", "attn.c_attn.weight"
    module, _, kind = rest.rpartition(".")
    return f"blk.{layer}.{BLOCK_NAMES[module]}.{kind}"


def our_name(name: str) -> str | None:
    """The inverse of gguf_name; None for a tensor GPT-2 does not have."""
    for ours, theirs in TOP_NAMES.items():
        if name == theirs:
            return ours
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit():
        for ours, theirs in BLOCK_NAMES.items():
            if parts[2] == theirs:
                return f"h.{parts[1]}.{ours}.{parts[3]}"
    return None


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def gguf_in_folder(folder: Path) -> Path | None:
    """The one .gguf file of a folder that holds nothing else gpt2kit reads (a hub download, say)."""
    found = sorted(folder.glob("*.gguf"))
    return found[0] if len(found) == 1 else None


def _open(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    # The reader raises these for bad magic, versions, types and sizes; numpy's memmap raises the rest.
    except (ValueError, KeyError, IndexError, OverflowError, struct.error, OSError, TypeError) as e:
        raise UserError(
            f"{path} is not a readable GGUF file ({str(e).splitlines()[0][:120]}); export or download it again"
        ) from None


def _field(reader, path: Path, key: str, kind: type, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise UserError(f"{path} lacks the GGUF key {key}; it is not a complete llama.cpp GPT-2 file")
    try:
        value = field.contents()
        return kind(value)
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: GGUF key {key} is malformed ({e})") from None


def _config(reader, path: Path) -> GPTConfig:
    arch = _field(reader, path, "general.architecture", str)
    if arch != ARCH:
        raise UserError(
            f"{path} is a GGUF of llama.cpp's {arch!r} architecture; gpt2kit reads GPT-2 ({ARCH!r}) GGUFs only"
        )
    n_embd = _field(reader, path, f"{ARCH}.embedding_length", int)
    n_ff = _field(reader, path, f"{ARCH}.feed_forward_length", int, 4 * n_embd)
    if n_ff != 4 * n_embd:
        raise UserError(f"{path}: feed_forward_length {n_ff} is not 4 x n_embd; gpt2kit loads GPT-2's own shape only")
    embd = next((t for t in reader.tensors if t.name == TOP_NAMES["wte.weight"]), None)
    if embd is None:
        raise UserError(f"{path} has no token_embd.weight tensor; it is not a complete GPT-2 GGUF")
    try:
        return GPTConfig(
            n_vocab=int(embd.shape[1]),  # ggml's shape is (ne0=n_embd, ne1=n_vocab)
            n_ctx=_field(reader, path, f"{ARCH}.context_length", int),
            n_embd=n_embd,
            n_head=_field(reader, path, f"{ARCH}.attention.head_count", int),
            n_layer=_field(reader, path, f"{ARCH}.block_count", int),
            # GGUF stores it as float32: 1e-5 comes back 9.9999997e-06 unless rounded to float32's 7 digits
            layer_norm_epsilon=float(f"{_field(reader, path, f'{ARCH}.attention.layer_norm_epsilon', float):.7g}"),
        )
    except MalformedConfig as e:  # a header value that no GPT-2 has: the file is damaged
        raise UserError(f"{path}: its GGUF header is damaged ({e}); export or download it again") from None


def _tensors(reader, path: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Every tensor dequantized to float32 in gpt2kit's names; and the GGUF types they were stored in."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    sd: dict[str, torch.Tensor] = {}
    types: set[str] = set()
    head = None
    for t in reader.tensors:
        name = TIED_HEAD if t.name == TIED_HEAD else our_name(t.name)
        if name is None:
            raise UserError(f"{path} has tensor {t.name}, which GPT-2 does not have; is it a GPT-2 GGUF?")
        try:
            data = dequantize(t.data, GGMLQuantizationType(t.tensor_type))
            # ggml lists shapes innermost first; numpy's order is the reverse: (out, in) for a matrix
            data = data.reshape([int(d) for d in reversed(t.shape)])
        except (NotImplementedError, ValueError) as e:
            raise UserError(f"{path}: tensor {t.name} cannot be dequantized ({e})") from None
        types.add(GGMLQuantizationType(t.tensor_type).name.lower())
        if name == TIED_HEAD:
            head = data
            continue
        sd[name] = torch.from_numpy(data.astype("float32", copy=True))
    if (
        head is not None
        and "wte.weight" in sd
        and not torch.allclose(torch.from_numpy(head.astype("float32")), sd["wte.weight"], atol=1e-2)
    ):
        raise UserError(
            f"{path} has an output head of its own (output.weight differs from token_embd); "
            "gpt2kit loads GPT-2 with its head tied to the token embedding"
        )
    return sd, types


def vocab_lists(folder: Path) -> tuple[list[str], list[str]]:
    """A vocabulary folder's token strings in id order (None for a gap) and its merges ("a b"), as files spell them.

    Either spelling: OpenAI's encoder.json + vocab.bpe or Hugging Face's vocab.json + merges.txt.
    """
    for enc, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (folder / enc).is_file() and (folder / merges).is_file():
            encoder = json.loads((folder / enc).read_text(encoding="utf-8"))
            tokens: list = [None] * (max(encoder.values()) + 1)
            for token, i in encoder.items():
                tokens[i] = token
            lines = (folder / merges).read_text(encoding="utf-8").split("\n")
            return tokens, [m for m in lines if m.strip() and not m.startswith("#version")]
    raise UserError(f"{folder} has no vocabulary files (encoder.json + vocab.bpe, or vocab.json + merges.txt)")


def _tokenizer(reader, path: Path) -> Tokenizer:
    """GPT-2's own vocabulary, checked token for token and merge for merge against the file's."""
    if _field(reader, path, "tokenizer.ggml.model", str, "gpt2") != "gpt2":
        raise UserError(f"{path} does not carry a byte-level BPE (gpt2) vocabulary")
    official = gpt2_tokenizer()
    tokens_field, merges_field = reader.fields.get("tokenizer.ggml.tokens"), reader.fields.get("tokenizer.ggml.merges")
    if tokens_field is None or merges_field is None:
        return official  # a file with no vocabulary: GPT-2's, as for a model folder without one
    tokens, merges = vocab_lists(Path(official.source))
    try:
        theirs, their_merges = tokens_field.contents(), merges_field.contents()
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: its vocabulary is malformed ({e}); export or download it again") from None
    padding = theirs[len(tokens) :]  # rows past the vocabulary that padded checkpoints carry
    if (
        theirs[: len(tokens)] != tokens
        or their_merges != merges
        or any(not (t.startswith("[PAD") and t.endswith("]")) for t in padding)
    ):
        raise UserError(
            f"{path} carries a vocabulary other than GPT-2's; gpt2kit reads GGUFs with GPT-2's "
            "vocabulary only (export a model with its own vocabulary from its folder instead)"
        )
    return official


def load_gguf(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor], Tokenizer, list[str]]:
    """A GPT-2 GGUF -> config, float32 state dict in gpt2kit's names, vocabulary, notes."""
    reader = _open(path)
    config = _config(reader, path)
    sd, types = _tensors(reader, path)
    # Hyperparameters that disagree with the tensors (a damaged header) fail here, before a model is built
    layers = {k.split(".")[1] for k in sd if k.startswith("h.")}
    found = (len(layers), *(tuple(sd[k].shape) if k in sd else None for k in ("wpe.weight", "wte.weight")))
    if found != (config.n_layer, (config.n_ctx, config.n_embd), (config.n_vocab, config.n_embd)):
        raise UserError(
            f"{path}: its hyperparameters (layers, context, width) do not match its tensors; "
            "the file is damaged or not a GPT-2"
        )
    tokenizer = _tokenizer(reader, path)
    notes = []
    quantized = sorted(types - {"f32"})
    if quantized:
        notes.append(f"GGUF tensors stored as {', '.join(quantized)}, dequantized to float32")
    return config, sd, tokenizer, notes
