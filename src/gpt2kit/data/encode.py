"""`encode_dataset`: text inputs -> a token dataset (and a held-out validation set), streaming."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import durable
from ..errors import UserError
from ..options import EncodeOptions
from ..tokenizer import Tokenizer, gpt2_tokenizer
from .extract import ReadOptions, documents, expand_inputs
from .records import conditional_template, templated_documents
from .templates import Template
from .tokens import TokenWriter, check_replaceable

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


def _file_pieces(
    path: Path, opts: ReadOptions, template: Template | None, keywords: int, by_record: bool
) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of a file; one piece per document except for huge plain-text files."""
    if template is not None:
        for doc in templated_documents(path, opts, template, keywords, by_record=by_record):
            yield doc, True
    elif path.suffix.lower() in (".txt", "") and path.stat().st_size > BIG_TEXT:
        with open(path, "r", encoding=opts.decoding, errors=opts.errors, newline="") as f:
            carry = ""
            while True:
                try:
                    chunk = f.read(PIECE)
                except UnicodeDecodeError as e:
                    raise UserError(
                        f"{path} is not valid {opts.encoding} ({e.reason}); pass --encoding NAME, "
                        f"or --errors replace to go on anyway"
                    ) from None
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


class _Encoding:
    """One run of encode_dataset: the writers, the batch being gathered, and the validation split."""

    def __init__(self, output: Path, tok: Tokenizer, val_fraction: float, eot: bool):
        self.tok, self.eot, self.val_fraction = tok, eot, val_fraction
        self.train = TokenWriter(output, tok.n_vocab)
        self.val = TokenWriter(val_path_for(output), tok.n_vocab) if val_fraction else None
        self.batch: list[tuple[str, bool, bool]] = []  # (text, ends document, goes to validation)
        self.batch_chars = 0
        self.documents = self.val_documents = 0
        self.seen_chars = self.val_chars = 0
        self.doc_chars, self.doc_to_val = 0, None  # of the document being read

    def add(self, text: str, ends: bool, file_size: int) -> None:
        """A piece of a document (`ends`: its last) from a file of `file_size` bytes."""
        if ends and self.doc_chars == 0 and not text.strip():
            return  # an empty document teaches nothing but a stray <|endoftext|>
        if self.doc_to_val is None:
            # Whole documents go to validation, every ~1/fraction-th by size, so the split is spread
            # through the inputs and a document never straddles it.
            size = file_size if not ends else len(text)
            self.doc_to_val = bool(self.val) and self.val_chars + size / 2 <= self.val_fraction * (
                self.seen_chars + size
            )
        self.doc_chars += len(text)
        self.batch.append((text, ends, self.doc_to_val))
        self.batch_chars += len(text)
        if ends:
            self.documents += 1
            self.val_documents += int(self.doc_to_val)
            self.seen_chars += self.doc_chars
            self.val_chars += self.doc_chars if self.doc_to_val else 0
            self.doc_chars, self.doc_to_val = 0, None
        if self.batch_chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        """Encode the gathered pieces together (on every core) and write them."""
        if not self.batch:
            return
        ids = self.tok.encode_batch([t for t, _, _ in self.batch], threads=os.cpu_count() or 1)
        for (text, ends, to_val), toks in zip(self.batch, ids):
            if ends and self.eot:
                toks.append(self.tok.eot_id)
            (self.val if to_val else self.train).write(np.asarray(toks), docs=1 if ends else 0)
        self.batch, self.batch_chars = [], 0

    def abort(self) -> None:
        self.train.abort()
        if self.val:
            self.val.abort()

    def close(self, inputs: list) -> None:
        """Publish both files, or neither when one would be empty."""
        if self.train.n_tokens == 0:
            self.abort()
            if self.val and self.val.n_tokens:  # whole documents are held out, so a few can all go
                raise UserError(
                    f"all {self.documents} document(s) of the inputs went to validation with --val-fraction "
                    f"{self.val_fraction}, leaving none to train on; give more documents, a smaller "
                    f"--val-fraction, or --val-fraction 0"
                )
            raise UserError(f"the inputs hold no text to train on ({', '.join(map(str, inputs))})")
        if self.val and self.val.n_tokens == 0:
            self.abort()
            raise UserError(
                f"no document went to validation with val_fraction={self.val_fraction}; the inputs have "
                f"{self.documents} document(s): use more documents or a larger fraction"
            )
        self.train.close()
        if self.val:
            self.val.close()


def encode_dataset(
    inputs: list[str | Path] | str | Path,
    output: str | Path,
    *,
    val_fraction: float = EncodeOptions.val_fraction,
    eot: bool = EncodeOptions.eot,
    encoding: str = EncodeOptions.encoding,
    errors: str = EncodeOptions.errors,
    column: str | None = EncodeOptions.column,
    field: str = EncodeOptions.field,
    tokenizer: Tokenizer | None = None,
    progress: bool = EncodeOptions.progress,
    template: str | None = EncodeOptions.template,
    keywords: int = EncodeOptions.keywords,
) -> dict:
    """Encode text files, folders and globs into gpt2kit's token format.

    Every document ends with <|endoftext|> unless eot=False. With val_fraction, whole documents go to
    a validation file beside the output (corpus.val.tokens), spread through the inputs. A template
    ("[{subreddit}] {title}") writes one document per CSV row or JSONL record from its fields; keywords=N
    fills its {keywords} field with N keywords of each document (alone: "keywords: ...\n" before each).
    An existing output (or validation file) is replaced only when it is a gpt2kit dataset: re-encoding.
    """
    EncodeOptions(
        val_fraction=val_fraction,
        eot=eot,
        encoding=encoding,
        errors=errors,
        column=column,
        field=field,
        progress=progress,
        template=template,
        keywords=keywords,
    )  # the one check of these values
    shape = conditional_template(template, keywords)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = expand_inputs(inputs)
    output = Path(output)
    _check_output(output, files, val_fraction)
    opts = ReadOptions(encoding=encoding, errors=errors, column=column, field=field)
    run = _Encoding(output, tokenizer or gpt2_tokenizer(), val_fraction, eot)
    start, n_bytes = time.time(), 0
    bar = _progress_bar(sum(f.stat().st_size for f in files)) if progress else None
    try:
        for path in files:
            size = path.stat().st_size
            for text, ends in _file_pieces(path, opts, shape, keywords, by_record=template is not None):
                run.add(text, ends, size)
            n_bytes += size
            if bar:
                bar.update(size)
        run.flush()
    except BaseException:
        run.abort()
        raise
    finally:
        if bar:
            bar.close()
    run.close(inputs)
    return _summary(run, output, len(files), n_bytes, time.time() - start)


def _check_output(output: Path, files: list[Path], val_fraction: float) -> None:
    """Everything that would stop the write, checked before the corpus is encoded, not after."""
    if output.resolve() in {f.resolve() for f in files}:
        raise UserError(f"the output {output} is also an input; choose another output path")
    if output.is_dir():
        raise UserError(
            f"the output {output} is a folder; give the path of the file to write, such as {output / 'corpus.tokens'}"
        )
    check_replaceable(output)  # re-encoding replaces a dataset; any other file stays the user's
    if val_fraction:
        check_replaceable(val_path_for(output))
    durable.check_writable(output.parent)


def _progress_bar(total_bytes: int):
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="encoding", dynamic_ncols=True)


def _summary(run: _Encoding, output: Path, n_files: int, n_bytes: int, seconds: float) -> dict:
    val_tokens = run.val.n_tokens if run.val else 0
    tokens = run.train.n_tokens + val_tokens
    return {
        "output": str(output),
        "val_output": str(run.val.path) if run.val else None,
        "files": n_files,
        "documents": run.documents,
        "val_documents": run.val_documents,
        "tokens": tokens,
        "train_tokens": run.train.n_tokens,
        "val_tokens": val_tokens,
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / max(tokens, 1),
        "seconds": seconds,
        "mb_per_s": n_bytes / 1e6 / max(seconds, 1e-9),
    }


def decode_dataset(path: str | Path, tokenizer: Tokenizer | None = None, chunk: int = 1 << 20) -> Iterator[str]:
    """A token dataset back to text, in pieces (like nshepperd's train_decode_text.py).
    Ids outside the tokenizer's vocabulary are a UserError before the first piece."""
    from .tokens import check_ids, read_tokens

    tok = tokenizer or gpt2_tokenizer()
    tokens = read_tokens(path)
    check_ids(
        tokens,
        tok.n_vocab,
        path,
        whose="GPT-2's" if tokenizer is None else "the tokenizer's",
        advice="decode it with the tokenizer it was encoded with",
    )
    dec = tok.stream_decoder()
    for i in range(0, tokens.size, chunk):
        data = tok.decode_bytes(np.asarray(tokens[i : i + chunk]).tolist())
        yield dec.push_bytes(data)
    yield dec.flush()
