"""What a constraint is, free of torch and of the grammar library: a kind and its source text.

`Constraint` sits in `SamplingSettings`, so it is frozen and hashable, and two requests that ask for the
same thing compare equal (the compile cache keys on `key`). The constructors check what can be checked
without the library (a schema is JSON, a choice has options); compiler.py checks the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

# What each kind's source is. "grammar" is Lark in llguidance's variant, or a llama.cpp GBNF grammar.
KINDS = {
    "json_schema": "a JSON Schema, as JSON text",
    "json_object": "any JSON object (no source)",
    "regex": "a regular expression the whole output must match",
    "grammar": "a grammar in Lark syntax (llguidance's variant) or llama.cpp's GBNF",
    "choice": "one of a few fixed strings",
}


@dataclass(frozen=True)
class Constraint:
    """The shape every generated token must keep. Build one with the class methods, which check the source."""

    kind: str
    source: str | tuple[str, ...] = ""  # a tuple of the options for "choice"; text for the others

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown constraint kind {self.kind!r}; one of {', '.join(KINDS)}")
        wanted = tuple if self.kind == "choice" else str
        if not isinstance(self.source, wanted):
            raise UserError(f"a {self.kind} constraint takes {KINDS[self.kind]}, got {type(self.source).__name__}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Constraint:
        """A JSON Schema as a dict or as JSON text; kept as compact JSON in the schema's own key order
        (the order the properties are generated in)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise UserError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise UserError(f"a JSON schema is a JSON object, got {type(schema).__name__}")
        try:
            text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise UserError(f"the JSON schema cannot be written as JSON: {e}") from None
        return cls("json_schema", text)

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """The whole output matches `pattern` (Rust regex syntax: no look-around, no backreferences)."""
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, text: str) -> Constraint:
        """A Lark grammar (llguidance's variant; the rule `start` is the document) or a GBNF one (`root`)."""
        return cls("grammar", text)

    @classmethod
    def choice(cls, options: list[str] | tuple[str, ...]) -> Constraint:
        """Exactly one of `options`."""
        options = tuple(options)
        if not options:
            raise UserError("a choice constraint needs at least one option")
        if not all(isinstance(o, str) for o in options):
            raise UserError("the options of a choice constraint are strings")
        return cls("choice", options)

    @property
    def key(self) -> str:
        """A hash of the kind and the source: what the compile cache is keyed by."""
        source = json.dumps(self.source) if isinstance(self.source, tuple) else self.source
        return hashlib.sha256(f"{self.kind}\0{source}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
