"""POST /tokenize and /detokenize, as vLLM's server has them: what the model would read, counted against
its context, and token ids back to text, with the model's own tokenizer."""

from __future__ import annotations

from ..lm import LM
from .completions import check_token_ids
from .protocol import DetokenizeRequest, TokenizeRequest


def tokenize(lm: LM, body: TokenizeRequest) -> dict:
    """The ids of `prompt` as /v1/completions encodes a text prompt (a literal <|endoftext|> is the token)."""
    ids = lm.tokenizer.encode(body.prompt)
    return {"tokens": ids, "count": len(ids), "max_model_len": lm.config.n_ctx}


def detokenize(lm: LM, body: DetokenizeRequest) -> dict:
    """The text of `tokens`; a character split across the ends becomes U+FFFD, as in completions."""
    check_token_ids(body.tokens, lm, param="tokens")
    return {"prompt": lm.tokenizer.decode(body.tokens)}
