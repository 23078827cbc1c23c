"""What `inspect` and `detect` read: a text given as it is, a text file, or standard input (-)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..data.extract import ReadOptions, read_text
from ..errors import UserError
from ..options import EncodeOptions

log = logging.getLogger("gpt2kit")


def read_source(
    source: str, *, file_only: bool = False, encoding: str = EncodeOptions.encoding, errors: str = EncodeOptions.errors
) -> str:
    """The text `source` names: - (standard input), a file, or else `source` itself is the text.
    file_only: `source` must be a file or - (`detect` reads files)."""
    EncodeOptions(encoding=encoding, errors=errors)  # how `encode` reads text files, and its one check
    options = ReadOptions(encoding=encoding, errors=errors)
    if source == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode(options.decoding, errors=errors)
        except UnicodeDecodeError as e:
            raise UserError(
                f"standard input is not valid {encoding} (byte {e.start}); pass --encoding NAME, "
                f"or --errors replace to go on anyway"
            ) from None
    path = Path(source)
    if _names_a_path(source) and path.is_dir():
        raise UserError(f"{path} is a folder; give a text file (or the text itself, in quotes)")
    if _names_a_path(source) and path.exists():
        if not path.is_file():
            raise UserError(f"{path} is not a regular file; give a text file")
        try:
            return read_text(path, options)
        except OSError as e:
            raise UserError(f"cannot read {path} ({e.strerror}); make it readable or pass another file") from None
    if file_only:
        raise UserError(f"{source} does not exist; give a text file, or - to read standard input")
    if "\n" not in source and " " not in source and path.suffix:  # file.txt mistyped: say what happened
        log.warning("%s is not a file: inspecting those characters as the text", source)
    return source


def _names_a_path(source: str) -> bool:
    """Whether `source` could be a path at all (a long text with newlines is not asked of the file system)."""
    return bool(source) and "\n" not in source and "\0" not in source and len(source.encode()) < 4096
