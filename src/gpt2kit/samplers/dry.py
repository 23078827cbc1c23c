"""DRY, "don't repeat yourself" (pi6am, koboldcpp PR 982), as llama.cpp's llama_sampler_dry_apply.

For each earlier place where the row's latest tokens already occurred, the token that followed there would
extend a repeat; if that repeat is at least dry_allowed_length tokens long, the token's logit loses
dry_multiplier * dry_base ** (length - dry_allowed_length), the longest repeat per token counting. A repeat
never runs back across a sequence breaker (a new line, a colon, ...), so a list's format is free to repeat.

The breakers are texts, matched in the model's own tokens as llama.cpp's get_overlapping_token_sequences does:
a token whose text holds a breaker is one by itself; a token whose text ends with the start of a breaker is
one when the tokens of the breaker's rest follow it. That needs the vocabulary, so the stage is built with
the tokenizer (gpt2kit.tokenizer.Tokenizer; GPT-2's own by default) and keeps each breaker list's tables.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_TAIL_TOKENS = 20  # llama.cpp's MAX_SEQ_LEN: longer breaker rests are cut, bounding the backward scan
FLOAT_MAX_LOG = 88.7228391  # log of float32's largest value: the penalty's exponent is clamped below it


class Breakers:
    """A breaker list in tokens: heads[token] is the tails (token tuples) that complete a breaker after it,
    () for a token that holds a whole breaker."""

    def __init__(self, heads: dict[int, set[tuple[int, ...]]], n_vocab: int):
        self.heads = heads
        self.is_head = np.zeros(n_vocab, dtype=bool)
        self.is_head[list(heads)] = True
        self.whole = np.zeros(n_vocab, dtype=bool)  # tokens that are breakers alone: never penalised
        self.whole[[t for t, tails in heads.items() if () in tails]] = True


def breaker_tokens(breakers: tuple[str, ...], vocab: list[bytes], encode) -> Breakers:
    """The Breakers of these texts over `vocab` (each token's bytes); encode(bytes) -> token ids."""
    heads: dict[int, set[tuple[int, ...]]] = {}
    for breaker in (b.encode("utf-8") for b in breakers):
        first = breaker[:1]
        for token, word in enumerate(vocab):
            if breaker in word:
                heads.setdefault(token, set()).add(())
                continue
            start = word.find(first)
            while start != -1:  # every place the word ends with the breaker's start
                if breaker.startswith(word[start:]):
                    tail = tuple(encode(breaker[len(word) - start :])[:MAX_TAIL_TOKENS])
                    heads.setdefault(token, set()).add(tail)
                start = word.find(first, start + 1)
    return Breakers(heads, len(vocab))


def repeat_limit(window: np.ndarray, breakers: Breakers) -> int:
    """How many of the latest tokens a repeat may span: those after the latest complete breaker."""
    heads = np.flatnonzero(
        breakers.is_head[np.minimum(window, len(breakers.is_head) - 1)] & (window < len(breakers.is_head))
    )
    n = len(window)
    for pos in heads[::-1]:  # latest first
        after = n - 1 - pos  # tokens after the head
        tails = [
            len(t)
            for t in breakers.heads[int(window[pos])]
            if len(t) <= after and tuple(window[pos + 1 : pos + 1 + len(t)].tolist()) == t
        ]
        if tails:  # the longest breaker found there ends the span
            return after - max(tails)
    return n


def repeat_lengths(window: np.ndarray, limit: int) -> np.ndarray:
    """(N - 1,): for each position j but the last, how many tokens ending at j equal the window's last ones,
    at most `limit` (llama.cpp finds the same numbers with a reversed Z-algorithm)."""
    n = len(window)
    lengths = np.zeros(n - 1, dtype=np.int64)
    ends = np.flatnonzero(window[:-1] == window[-1])  # places whose token matches the latest one
    matched = 0
    while ends.size and matched < limit:
        lengths[ends] += 1
        matched += 1
        ends = ends[ends >= matched]  # the match may not run past the window's start
        ends = ends[window[ends - matched] == window[n - 1 - matched]]
    return lengths


class Dry:
    name = "dry"
    # Before temperature, with the other penalties (llama.cpp's order: penalties, dry, top_n_sigma, top_k, ...):
    # a penalty on the raw logits, and at temperature 0 too, where it does most of its work against loops.
    before_temperature = True

    def __init__(self, tokenizer=None):
        self._tokenizer = tokenizer  # None: GPT-2's own, read at the first use
        self._vocab: list[bytes] | None = None
        self._breakers: dict[tuple[str, ...], Breakers] = {}

    def wants(self, s) -> bool:
        return s.dry_multiplier > 0 and s.dry_penalty_last_n != 0

    def breakers(self, texts: tuple[str, ...]) -> Breakers:
        """The tables of one breaker list, built once (a pass over the vocabulary per breaker)."""
        if texts not in self._breakers:
            if self._tokenizer is None:
                from ..tokenizer import gpt2_tokenizer

                self._tokenizer = gpt2_tokenizer()
            tok = self._tokenizer
            if self._vocab is None:
                self._vocab = [tok.decode_bytes([i]) for i in range(tok.n_vocab)]
            self._breakers[texts] = breaker_tokens(texts, self._vocab, self._encode)
        return self._breakers[texts]

    def _encode(self, data: bytes) -> list[int]:
        """A breaker's rest in tokens. One cut inside a character starts with UTF-8 continuation bytes: those
        are GPT-2's one-byte tokens (its vocabulary holds all 256), the rest is encoded as text."""
        lead = 0
        while lead < len(data) and 0x80 <= data[lead] < 0xC0:
            lead += 1
        single = {word[0]: i for i, word in enumerate(self._vocab) if len(word) == 1} if lead else {}
        return [single[b] for b in data[:lead]] + self._tokenizer.encode_ordinary(data[lead:].decode("utf-8"))

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        breakers = self.breakers(s.dry_sequence_breakers)
        rows, tokens, penalties = [], [], []
        for i, seq in enumerate(seqs):
            found = self.row_penalties(seq.tokens, s, breakers)
            rows += [i] * len(found)
            tokens += list(found)
            penalties += list(found.values())
        if not rows:
            return logits
        out = logits.clone()
        index = (torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device))
        # float32 subtraction of a penalty rounded to float32, as llama.cpp's `logit -= penalty`
        out[index] = logits[index] - torch.tensor(penalties, dtype=torch.float64).to(logits.dtype).to(logits.device)
        return out

    def row_penalties(self, row: list[int], s, breakers: Breakers) -> dict[int, float]:
        """token id -> the penalty on its logit, for one row's tokens (prompt and output)."""
        window = np.asarray(row if s.dry_penalty_last_n == -1 else row[-s.dry_penalty_last_n :], dtype=np.int64)
        allowed = s.dry_allowed_length
        if len(window) <= allowed:
            return {}
        limit = repeat_limit(window, breakers)
        if limit < allowed:
            return {}
        lengths = repeat_lengths(window, limit)
        at = np.flatnonzero(lengths >= allowed)
        longest: dict[int, int] = {}
        for token, length in zip(window[at + 1].tolist(), lengths[at].tolist()):  # the token that followed
            if length > longest.get(token, -1):
                longest[token] = length
        # llama.cpp clamps the exponent so that base ** exponent stays within float32
        top = int(FLOAT_MAX_LOG / math.log(s.dry_base)) if s.dry_base > 1.000001 else 0
        whole = breakers.whole
        return {
            token: s.dry_multiplier * _power(s.dry_base, min(n - allowed, top) if top > 0 else n - allowed)
            for token, n in longest.items()
            if not (token < len(whole) and whole[token])
        }


def _power(base: float, exponent: int) -> float:
    """base ** exponent, inf where that overflows (as C's pow), not Python's OverflowError."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf
