"""GPT-2's vocabulary as llguidance sees it: each id's bytes, and <|endoftext|> as the one special token.

Built from the Tokenizer's public encode/decode (0.5 s for GPT-2's 50,257 tokens, once per tokenizer and
process), so any model folder's own vocabulary works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class Vocabulary:
    """llguidance's tokenizer for one gpt2kit Tokenizer: `size` ids, `eot_id` the end of a document."""

    lltokenizer: object  # llguidance.LLTokenizer (imported where it is used: an optional dependency)
    size: int
    eot_id: int


class _Wrapped:
    """What llguidance.TokenizerWrapper reads from a tokenizer: the token bytes, the special ids, and
    a function from text to ids (refusing bytes, so that the wrapper passes text)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokens, self.special_token_ids = [], [tokenizer.eot_id]
        for i in range(tokenizer.n_vocab):
            try:
                self.tokens.append(tokenizer.decode_bytes([i]))
            except KeyError:  # an id the vocabulary skips: never allowed
                self.tokens.append(b"")
                self.special_token_ids.append(i)
        self.eos_token_id, self.bos_token_id = tokenizer.eot_id, None
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text only")
        return self._tokenizer.encode_ordinary(text)


@lru_cache(maxsize=8)
def vocabulary_for(tokenizer: Tokenizer) -> Vocabulary:
    """The llguidance view of `tokenizer`, built once per tokenizer."""
    import llguidance

    wrapped = _Wrapped(tokenizer)
    lltokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapped), eos_token=tokenizer.eot_id)
    return Vocabulary(lltokenizer, len(wrapped.tokens), tokenizer.eot_id)
