"""`encode_dataset`: text inputs -> a token dataset (and a held-out validation set), streaming."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..options import EncodeOptions
from ..tokenizer import Tokenizer, gpt2_tokenizer
from .extract import ReadOptions, documents, expand_inputs
from .tokens import TokenWriter

BIG_TEXT = 16 << 20  # plain-text files larger than this are read in pieces
PIECE = 4 << 20
BATCH_CHARS = 4 << 20  # documents are encoded together in batches of about this much text


def val_path_for(output: Path) -> Path:
    """data/corpus.tokens -> data/corpus.val.tokens"""
    return output.with_name(output.stem + ".val" + (output.suffix or ".tokens"))


def _safe_cut(text: str) -> int:
    """A cut point where GPT-2's pre-tokeniser has a boundary anyway: after a newline, before non-space."""
    tail_start = max(0, len(text) - (1 << 20))
    last = None
    for last in re.finditer(r"\n(?=\S)", text[tail_start:]):
        pass
    return tail_start + last.end() if last else len(text)


def _file_pieces(path: Path, opts: ReadOptions) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of a file; one piece per document except for huge plain-text files."""
    if path.suffix.lower() in (".txt", "") and path.stat().st_size > BIG_TEXT:
        with open(path, "r", encoding=opts.encoding, errors=opts.errors, newline="") as f:
            carry = ""
            while True:
                try:
                    chunk = f.read(PIECE)
                except UnicodeDecodeError as e:
                    raise UserError(f"{path} is not valid {opts.encoding} ({e.reason}); pass --encoding NAME, "
                                    f"or --errors replace to go on anyway") from None
                if "\x00" in chunk:
                    raise UserError(f"{path} looks like a binary file, not text; leave it out of the inputs")
                if not chunk:
                    if carry:
                        yield carry, True
                    return
                text = carry + chunk
                cut = _safe_cut(text)
                carry = text[cut:]
                if cut:
                    yield text[:cut], False
    else:
        for doc in documents(path, opts):
            yield doc, True


def encode_dataset(inputs: list[str | Path] | str | Path, output: str | Path, *,
                   val_fraction: float = EncodeOptions.val_fraction, eot: bool = EncodeOptions.eot,
                   encoding: str = EncodeOptions.encoding, errors: str = EncodeOptions.errors,
                   column: str | None = EncodeOptions.column, field: str = EncodeOptions.field,
                   tokenizer: Tokenizer | None = None, progress: bool = EncodeOptions.progress) -> dict:
    """Encode text files, folders and globs into gpt2kit's token format.

    Every document ends with <|endoftext|> unless eot=False. With val_fraction, whole documents go to
    a validation file beside the output (corpus.val.tokens), spread through the inputs.
    """
    EncodeOptions(val_fraction=val_fraction, eot=eot, encoding=encoding, errors=errors, column=column,
                  field=field, progress=progress)  # the one check of these values
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = expand_inputs(inputs)
    output = Path(output)
    if output.resolve() in {f.resolve() for f in files}:
        raise UserError(f"the output {output} is also an input; choose another output path")
    tok = tokenizer or gpt2_tokenizer()
    opts = ReadOptions(encoding=encoding, errors=errors, column=column, field=field)
    total_bytes = sum(f.stat().st_size for f in files)
    train = TokenWriter(output, tok.n_vocab)
    val = TokenWriter(val_path_for(output), tok.n_vocab) if val_fraction else None
    stats = {"documents": 0, "val_documents": 0, "bytes": 0}
    seen_chars = val_chars = 0
    start = time.time()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="encoding", dynamic_ncols=True)
    batch: list[tuple[str, bool, bool]] = []  # (text, ends document, goes to validation)
    batch_chars = 0
    threads = os.cpu_count() or 1

    def flush():
        nonlocal batch, batch_chars
        if not batch:
            return
        ids = tok.encode_batch([t for t, _, _ in batch], threads=threads)
        for (text, ends, to_val), toks in zip(batch, ids):
            if ends and eot:
                toks.append(tok.eot_id)
            (val if to_val else train).write(np.asarray(toks), docs=1 if ends else 0)
        batch, batch_chars = [], 0

    try:
        for path in files:
            doc_chars, doc_to_val = 0, None
            for text, ends in _file_pieces(path, opts):
                if ends and doc_chars == 0 and not text.strip():
                    continue  # an empty document teaches nothing but a stray <|endoftext|>
                if doc_to_val is None:
                    # Whole documents go to validation, every ~1/fraction-th by size, so the split is
                    # spread through the inputs and a document never straddles it.
                    size = path.stat().st_size if not ends else len(text)
                    doc_to_val = bool(val) and val_chars + size / 2 <= val_fraction * (seen_chars + size)
                doc_chars += len(text)
                batch.append((text, ends, doc_to_val))
                batch_chars += len(text)
                if ends:
                    stats["documents"] += 1
                    stats["val_documents"] += int(doc_to_val)
                    seen_chars += doc_chars
                    val_chars += doc_chars if doc_to_val else 0
                    doc_chars, doc_to_val = 0, None
                if batch_chars >= BATCH_CHARS:
                    flush()
            stats["bytes"] += path.stat().st_size
            if bar:
                bar.update(path.stat().st_size)
        flush()
    except BaseException:
        train.abort()
        if val:
            val.abort()
        if bar:
            bar.close()
        raise
    if bar:
        bar.close()
    if train.n_tokens == 0:
        train.abort()
        if val:
            val.abort()
        raise UserError(f"the inputs hold no text to train on ({', '.join(map(str, inputs))})")
    train.close()
    if val:
        if val.n_tokens == 0:
            val.abort()
            raise UserError(f"no document went to validation with val_fraction={val_fraction}; "
                            f"the inputs have {stats['documents']} document(s): use more documents or a larger fraction")
        val.close()
    seconds = time.time() - start
    tokens = train.n_tokens + (val.n_tokens if val else 0)
    return {
        "output": str(output), "val_output": str(val.path) if val else None, "files": len(files),
        "documents": stats["documents"], "val_documents": stats["val_documents"],
        "tokens": tokens, "train_tokens": train.n_tokens, "val_tokens": val.n_tokens if val else 0,
        "bytes": stats["bytes"], "bytes_per_token": stats["bytes"] / max(tokens, 1),
        "seconds": seconds, "mb_per_s": stats["bytes"] / 1e6 / max(seconds, 1e-9),
    }


def decode_dataset(path: str | Path, tokenizer: Tokenizer | None = None, chunk: int = 1 << 20) -> Iterator[str]:
    """A token dataset back to text, in pieces (like nshepperd's train_decode_text.py)."""
    from .tokens import read_tokens
    tok = tokenizer or gpt2_tokenizer()
    tokens = read_tokens(path)
    dec = tok.stream_decoder()
    for i in range(0, tokens.size, chunk):
        data = tok.decode_bytes(np.asarray(tokens[i:i + chunk]).tolist())
        yield dec.push_bytes(data)
    yield dec.flush()
