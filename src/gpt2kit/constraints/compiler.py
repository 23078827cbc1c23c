"""A Constraint -> llguidance's grammar, checked on the vocabulary and compiled once per content.

`compile_constraint` is the check every front end runs before any generation: a schema, regex or grammar
that is invalid, or that no text can match, is a UserError of one line. What it returns makes the
per-row matchers (`Compiled.matcher()`), copies of one matcher kept at its start state.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

from ..errors import UserError
from .spec import Constraint
from .vocabulary import Vocabulary

# JSON as people and small models write it: one line, ", " and ": " (OpenAI's and xgrammar's default).
# Free whitespace would let a model fill max_tokens with spaces and newlines, which GPT-2 has hundreds of.
# A schema can change these in its "x-guidance" object.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = '{"type": "object"}'
WHAT = {
    "json_schema": "the JSON schema",
    "json_object": "the JSON object constraint",
    "regex": "the regular expression",
    "grammar": "the grammar",
    "choice": "the choices",
}
CACHE_SIZE = 64  # compiled constraints kept per process (a matcher at its start state is tens of kB)


class Compiled:
    """One constraint compiled for one vocabulary; `matcher()` gives each row its own state."""

    def __init__(self, constraint: Constraint, vocabulary: Vocabulary, template):
        self.constraint, self.vocabulary = constraint, vocabulary
        self._template, self._lock = template, threading.Lock()

    def matcher(self):
        """A fresh llguidance.LLMatcher at the start of the document."""
        with self._lock:  # the server checks requests on one thread while the engine starts rows on another
            return self._template.deep_copy()


_cache: OrderedDict[tuple[str, int], Compiled] = OrderedDict()
_cache_lock = threading.Lock()


def compile_constraint(constraint: Constraint, vocabulary: Vocabulary) -> Compiled:
    """`constraint` compiled for `vocabulary`, from the cache when the same content was compiled before."""
    key = (constraint.key, id(vocabulary.lltokenizer))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    compiled = Compiled(constraint, vocabulary, _build(constraint, vocabulary))
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def grammar_text(constraint: Constraint) -> str:
    """The constraint in llguidance's own grammar format (not yet checked)."""
    import llguidance
    from llguidance.gbnf_to_lark import any_to_lark

    kind, source = constraint.kind, constraint.source
    try:
        if kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_STYLE)
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(ANY_OBJECT, defaults=JSON_STYLE)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(source)
        if kind == "grammar":
            return llguidance.LLMatcher.grammar_from_lark(any_to_lark(source))
        # choice: a Lark rule of string literals (JSON's escapes are Lark's)
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in source))
    except Exception as e:  # the library's ValueError, or the GBNF converter's own errors
        raise UserError(f"{WHAT[kind]} is invalid: {one_line(str(e))}") from None


def _build(constraint: Constraint, vocabulary: Vocabulary):
    import llguidance

    matcher = llguidance.LLMatcher(vocabulary.lltokenizer, grammar_text(constraint), log_level=0)
    if matcher.is_error():
        raise UserError(f"{WHAT[constraint.kind]} is invalid: {one_line(matcher.get_error())}")
    # The first mask is where a language with no text in it shows (a regex like [^\s\S]); also the first
    # use of a lexer that llguidance builds lazily, which then lands in the cache rather than in a request.
    probe = matcher.deep_copy()
    mask = probe.compute_bitmask()
    if probe.is_error() or not any(mask):
        raise UserError(f"no text matches {WHAT[constraint.kind]}: it can never be met")
    return matcher


def one_line(message: str) -> str:
    """llguidance's messages on one line: the first line, and the line that names the error when a
    source excerpt with carets sits between them."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    # a regex is compiled as the Lark rule `start: /.../`: its position in that rule means nothing to people
    first = lines[0].removeprefix("at 1(8): invalid regex").replace(" (in regex): regex parse error:", "")
    first = first.split("; following special tokens", 1)[0]  # an empty list: GPT-2 has only <|endoftext|>
    first = re.sub(r"^at (\d+)\((\d+)\): ", r"line \1, column \2: ", first)
    detail = next((line.removeprefix("error: ") for line in lines[1:] if line.startswith("error:")), None)
    return f"{first.strip()}: {detail}" if detail else first.strip()
