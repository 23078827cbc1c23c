"""Files -> records (named values) for templates: a CSV row by its header, a JSONL line by its fields,
any other file one record whose one field, `text`, is the document extract.py reads from it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .extract import ReadOptions, documents, json_lines, read_text
from .keywords import SEPARATOR, extract_keywords
from .templates import Field, Template, parse_template

TEXT_FIELD = "text"  # the one field of a plain document
KEYWORDS_FIELD = "keywords"  # the field --keywords fills
KEYWORDS_TEMPLATE = "keywords: {keywords}\n{text}"  # --keywords without a --template of one's own


def records(path: Path, opts: ReadOptions) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, values) per record; `where` names it for errors ("data.csv row 3")."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_records(path, read_text(path, opts))
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(path, read_text(path, opts))
    else:
        for n, doc in enumerate(documents(path, opts), 1):
            yield f"{path} document {n}", {TEXT_FIELD: doc}


def _csv_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, str]]]:
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None:
        return
    for n, row in enumerate(rows, 1):
        if not any(cell.strip() for cell in row):
            continue  # blank lines between rows
        # A short row lacks its last columns: they are missing, not empty, so the template says which.
        yield f"{path} row {n}", dict(zip(header, row))


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, str]]]:
    for n, obj in json_lines(path, text):
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n} is not a JSON object")
        yield f"{path} line {n}", {k: "" if v is None else str(v) for k, v in obj.items()}


def templated_documents(
    path: Path, opts: ReadOptions, template: Template, keywords: int, *, by_record: bool = True
) -> Iterator[str]:
    """One document per record, written by `template`. keywords > 0 fills its {keywords} field with that
    many keywords of the fields after it (the text the keywords are to steer). by_record=False reads
    the documents encode reads without a template (one --column or --field), as the field `text`."""
    source = (
        records(path, opts)
        if by_record
        else ((f"{path} document {n}", {TEXT_FIELD: doc}) for n, doc in enumerate(documents(path, opts), 1))
    )
    about = keyword_sources(template)
    for where, values in source:
        if keywords:
            missing = [f for f in about if f not in values]
            if missing:
                template.render({**values, KEYWORDS_FIELD: ""}, where)  # says which field is missing, and where
            text = "\n".join(values[f] for f in about)
            values = {**values, KEYWORDS_FIELD: SEPARATOR.join(extract_keywords(text, keywords))}
        yield template.render(values, where)


def conditional_template(template: str | None, keywords: int) -> Template | None:
    """The template encode writes documents with: the user's, or for --keywords alone KEYWORDS_TEMPLATE."""
    if template is None:
        return parse_template(KEYWORDS_TEMPLATE) if keywords else None
    parsed = parse_template(template)
    if keywords and KEYWORDS_FIELD not in parsed.fields:
        raise UserError(
            f"--keywords fills the template's {{{KEYWORDS_FIELD}}} field, and {template!r} has none; "
            f'e.g. --template "[{{{KEYWORDS_FIELD}}}] {{title}}"'
        )
    if keywords and not keyword_sources(parsed):
        raise UserError(
            f"the template {template!r} has no field after {{{KEYWORDS_FIELD}}}: keywords are drawn from "
            f'the text that follows them, e.g. "[{{{KEYWORDS_FIELD}}}] {{title}}"'
        )
    return parsed


def keyword_sources(template: Template) -> list[str]:
    """The fields keywords are drawn from: those after {keywords}, the text that generation will write from them
    (minimaxir's keyword generation draws them from the text, never from the other conditions)."""
    names = [p.name for p in template.parts if isinstance(p, Field)]
    after = names[names.index(KEYWORDS_FIELD) + 1 :] if KEYWORDS_FIELD in names else []
    return [f for f in dict.fromkeys(after) if f != KEYWORDS_FIELD]
