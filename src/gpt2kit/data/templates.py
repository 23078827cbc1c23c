"""Templates for conditional datasets: "[{subreddit}] {title}" turns each CSV row or JSONL record into one
document, gives generation its prompt (the text up to the first field left open), and reads the fields
back out of what the model wrote.

gpt-2-simple users build such documents by hand ("<|startoftext|>" + subreddit + title + "<|endoftext|>"
from a BigQuery CSV) and generate with `prefix` and `truncate`; a template is that recipe written once.
`{{` and `}}` stand for literal braces, as in Python's str.format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import UserError

# encode ends every document with <|endoftext|>, so in training a document starts right after one:
# a prompt that starts with it puts the model at the start of a document (gpt-2-simple's <|startoftext|>).
DOCUMENT_START = "<|endoftext|>"


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and fields, in order."""

    source: str
    parts: tuple[str | Field, ...]

    @property
    def fields(self) -> list[str]:
        """Field names in order of first appearance."""
        return list(dict.fromkeys(p.name for p in self.parts if isinstance(p, Field)))

    def render(self, values: Mapping[str, str], where: str = "the values") -> str:
        """The document for one record; `where` names the record in the error for a missing field."""
        missing = [f for f in self.fields if f not in values]
        if missing:
            have = ", ".join(values) or "none"
            raise UserError(f"{where} has no {missing[0]!r} for the template {self.source!r} (it has: {have})")
        return "".join(p if isinstance(p, str) else str(values[p.name]) for p in self.parts)

    def prompt(self, values: Mapping[str, str]) -> str:
        """The document's text up to the first field without a value: what generation starts from."""
        unknown = [k for k in values if k not in self.fields]
        if unknown:
            raise UserError(
                f"the template {self.source!r} has no field {unknown[0]!r}; its fields are: {', '.join(self.fields)}"
            )
        out: list[str] = []
        open_field = None
        for p in self.parts:
            if isinstance(p, Field) and p.name not in values:
                open_field = open_field or p.name
            elif open_field is None:
                out.append(p if isinstance(p, str) else str(values[p.name]))
            elif isinstance(p, Field):
                raise UserError(
                    f"the template {self.source!r} has {{{p.name}}} after {{{open_field}}}, which has no "
                    f"value: generation starts at the first field left open, so give {open_field} too "
                    f"or put {{{p.name}}} first"
                )
        # Drop trailing spaces: GPT-2's tokenizer joins a space to the word after it (" Title"), so a
        # prompt ending in a bare space asks for a token split the model never saw in training.
        return "".join(out).rstrip(" ")

    def read(self, text: str, known: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """The fields of a document written by the template, or None when the text does not fit it.
        `known` fields (those a prompt gave) must hold exactly their values, which settles where they end."""
        known = known or {}
        m = self._pattern(known).fullmatch(text)
        if not m:
            return None
        return {name: known[name] if name in known else m.group(f"f{i}") for i, name in enumerate(self.fields)}

    def continuation_regex(self, values: Mapping[str, str]) -> str:
        """The shape of what generation writes after `prompt(values)`: a regular
        expression (Rust syntax, as constraints take it) that `read` always reads back.

        Each open field's value is one line of at least one character; a field with text after it also leaves
        out that text's first character, so `read` (which ends a field where the text after it first fits)
        splits the document where the model did."""
        open_index = next((i for i, p in enumerate(self.parts) if isinstance(p, Field) and p.name not in values), None)
        if open_index is None:
            raise UserError(
                f"every field of the template {self.source!r} has a value: nothing is left to "
                f"generate under --constrain"
            )
        before = "".join(p if isinstance(p, str) else str(values[p.name]) for p in self.parts[:open_index])
        out = [_regex_literal(before[len(before.rstrip(" ")) :])]  # the spaces `prompt` leaves to the model
        seen: set[str] = set()
        for i, p in enumerate(self.parts[open_index:], open_index):
            if isinstance(p, str):
                out.append(_regex_literal(p))
                continue
            if p.name in seen:
                raise UserError(
                    f"the template {self.source!r} repeats {{{p.name}}}: --constrain cannot make two "
                    f"places hold the same generated text"
                )
            seen.add(p.name)
            after = self.parts[i + 1] if i + 1 < len(self.parts) else ""
            excluded = "\\n" + (_regex_literal(after[0], in_class=True) if isinstance(after, str) and after else "")
            out.append(f"[^{excluded}]+")
        return "".join(out)

    def check_readable(self) -> None:
        """Two fields with no text between them cannot be told apart when read back."""
        for a, b in zip(self.parts, self.parts[1:]):
            if isinstance(a, Field) and isinstance(b, Field):
                raise UserError(
                    f"in the template {self.source!r}, {{{a.name}}} and {{{b.name}}} touch: put some "
                    f"text between them so generated documents can be read back"
                )

    def _pattern(self, known: Mapping[str, str]) -> re.Pattern:
        names = self.fields
        seen: set[str] = set()
        out = []
        last_field = max((i for i, p in enumerate(self.parts) if isinstance(p, Field)), default=-1)
        for i, p in enumerate(self.parts):
            if isinstance(p, str):
                out.append(re.escape(p))
            elif p.name in known:
                out.append(re.escape(str(known[p.name])))
            elif p.name in seen:  # the same field twice must hold the same text
                out.append(f"(?P=f{names.index(p.name)})")
            else:
                seen.add(p.name)
                # each field up to the first place the text after it fits; the last one takes the rest
                out.append(f"(?P<f{names.index(p.name)}>.*{'' if i == last_field else '?'})")
        return re.compile("".join(out), re.S)


_REGEX_SPECIAL = set("\\.+*?()|[]{}^$#&-~")


def _regex_literal(text: str, in_class: bool = False) -> str:
    """`text` as a regex matching exactly itself, in the Rust syntax llguidance reads (Python's re.escape
    also escapes characters Rust refuses to see escaped, such as quotes)."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == " ":
            out.append("\\x20" if in_class else " ")
        elif ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def parse_template(source: str) -> Template:
    """'[{subreddit}] {title}' -> Template; `{{`/`}}` are literal braces."""
    parts: list[str | Field] = []
    text, i = "", 0
    while i < len(source):
        ch = source[i]
        if source.startswith("{{", i) or source.startswith("}}", i):
            text, i = text + ch, i + 2
        elif ch == "{":
            end = source.find("}", i)
            name = source[i + 1 : end].strip() if end >= 0 else ""
            if end < 0 or not name or "{" in name:
                raise UserError(
                    f"the template {source!r} has an unclosed or empty {{ at character {i + 1}; "
                    f"write {{{{ for a literal brace"
                )
            if text:
                parts.append(text)
            parts.append(Field(name))
            text, i = "", end + 1
        elif ch == "}":
            raise UserError(
                f"the template {source!r} has a }} with no {{ at character {i + 1}; write }}}} for a literal brace"
            )
        else:
            text, i = text + ch, i + 1
    if text:
        parts.append(text)
    template = Template(source, tuple(parts))
    if not template.fields:
        raise UserError(f"the template {source!r} has no {{field}}; name a CSV column or JSONL field in braces")
    return template


def parse_assignment(item: str) -> tuple[str, str]:
    """--field NAME=VALUE -> (NAME, VALUE)."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise UserError(f"--field {item!r} is not NAME=VALUE, e.g. --field subreddit=legaladvice")
    return name.strip(), value


def read_field_sets(path: str | Path) -> list[dict[str, str]]:
    """A JSONL file with one object of field values per line (one prompt each)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the fields file {path} is a folder; pass a .jsonl file")
    if not path.exists():  # not is_file(): a pipe (`--fields <(...)`) is a fine thing to read
        raise UserError(f"the fields file {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM is not data
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); convert it, e.g. with iconv -t UTF-8") from None
    except OSError as e:
        raise UserError(
            f"cannot read the fields file {path} ({e.strerror}); make it readable or pass another"
        ) from None
    sets = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise UserError(f'{path}:{n} is not a JSON object of field values, e.g. {{"subreddit": "legaladvice"}}')
        sets.append({k: "" if v is None else str(v) for k, v in obj.items()})
    if not sets:
        raise UserError(f"the fields file {path} holds no field values")
    return sets
