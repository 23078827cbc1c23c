"""Files -> documents of plain text.

Markdown and HTML become the words a reader sees (headings, list items and link texts stay;
markup and front matter go), as people clean blog posts by hand before training. CSV rows
(one column) and JSONL lines (one field) are one document each; any other file is one document.
"""

from __future__ import annotations

import codecs
import csv
import glob
import html
import io
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

from ..errors import UserError

MARKDOWN = {".md", ".markdown"}
HTML = {".html", ".htm"}
TOKEN_FILES = {".npz", ".bin", ".tokens"}


@dataclass(frozen=True)
class ReadOptions:
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace" to go on past undecodable bytes
    column: str | None = None  # CSV column (name or 0-based number); default the first
    field: str = "text"  # JSONL field

    def __post_init__(self) -> None:
        try:  # checked before any file is read (a big text file once met it midway, with a traceback)
            codecs.lookup(self.encoding)
        except LookupError:
            raise UserError(
                f"unknown --encoding {self.encoding!r}: give a Python codec name such as utf-8, latin-1 or cp1252"
            ) from None

    @property
    def decoding(self) -> str:
        """The codec files are read with: UTF-8 drops a leading byte-order mark (Excel's "CSV UTF-8" writes one,
        and it would be part of the first column's name, or of the first token)."""
        return "utf-8-sig" if codecs.lookup(self.encoding).name == "utf-8" else self.encoding


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files, folders (recursively, in sorted order) and globs -> a list of files."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        elif any(ch in str(item) for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matched:
                raise UserError(f"the pattern {item} matches no files")
            files += matched
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError(f"no files found in {', '.join(map(str, inputs))}")
    return files


def read_text(path: Path, opts: ReadOptions) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UserError(f"{path} looks like a binary file, not text; leave it out of the inputs")
    try:
        return data.decode(opts.decoding, errors=opts.errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid {opts.encoding} (byte {e.start}); pass --encoding NAME, "
            f"or --errors replace to go on anyway"
        ) from None
    except LookupError:
        raise UserError(f"unknown --encoding {opts.encoding!r}") from None


class _HTMLText(HTMLParser):
    BLOCK = {
        "p",
        "div",
        "br",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "section",
        "article",
        "blockquote",
        "pre",
        "ul",
        "ol",
        "table",
        "header",
        "footer",
        "hr",
    }
    SKIP = {"script", "style", "head", "noscript", "template", "svg"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    return _tidy("".join(parser.parts))


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def markdown_to_text(source: str) -> str:
    text = re.sub(r"\A---\s*\n.*?\n(---|\.\.\.)\s*\n", "", source, flags=re.S)  # YAML front matter
    text = re.sub(r"\A\+\+\+\s*\n.*?\n\+\+\+\s*\n", "", text, flags=re.S)  # TOML front matter
    text = re.sub(r"^(```|~~~).*$", "", text, flags=re.M)  # code fences (their contents stay)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images -> alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links -> link text
    text = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", text)  # reference links
    text = re.sub(r"^[ \t]*\[[^\]]+\]:[ \t]*\S+.*$", "", text, flags=re.M)  # link definitions
    text = re.sub(r"^[ \t]{0,3}#{1,6}[ \t]*(.*?)[ \t]*#*[ \t]*$", r"\1", text, flags=re.M)  # headings
    text = re.sub(r"^[ \t]*([-*+]|\d+[.)])[ \t]+", "", text, flags=re.M)  # list markers
    text = re.sub(r"^[ \t]*>[ \t]?", "", text, flags=re.M)  # block quotes
    text = re.sub(r"^[ \t]*([-*_][ \t]*){3,}$", "", text, flags=re.M)  # horizontal rules
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])([*_])(?!\s)(.+?)(?<!\s)\1(?![\w*])", r"\2", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"<[^>\n]+>", "", text)  # inline HTML tags
    return _tidy(html.unescape(text))


def _csv_documents(path: Path, text: str, column: str | None) -> Iterator[str]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        return
    if column is None:
        col = 0
        # A header is a first row whose cells are all short labels; otherwise the first row is data.
        if not all(h.strip() and len(h) < 64 for h in header):
            yield header[0]
    elif column in header:
        col = header.index(column)
    elif column.isdigit():
        col = int(column)
        if col >= len(header):
            raise UserError(
                f"{path} has {len(header)} columns (numbered from 0: {', '.join(header)}); "
                f"--column {column} is past the last"
            )
        yield header[col]
    else:
        raise UserError(f"{path} has no column {column!r}; its columns are: {', '.join(header)}")
    for row in rows:
        if col < len(row) and row[col].strip():
            yield row[col]


def json_lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of a JSONL file; a bad line is a UserError."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{n} is not valid JSON") from None
        yield n, obj


def _jsonl_documents(path: Path, text: str, field: str) -> Iterator[str]:
    for n, obj in json_lines(path, text):
        if not isinstance(obj, dict) or field not in obj:
            raise UserError(f"{path}:{n} has no field {field!r}; pass --field NAME")
        if obj[field]:
            yield str(obj[field])


def documents(path: Path, opts: ReadOptions) -> Iterator[str]:
    """The documents in one file, as plain text."""
    suffix = path.suffix.lower()
    text = read_text(path, opts)
    if suffix in MARKDOWN:
        yield markdown_to_text(text)
    elif suffix in HTML:
        yield html_to_text(text)
    elif suffix == ".csv":
        yield from _csv_documents(path, text, opts.column)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_documents(path, text, opts.field)
    else:
        yield text
