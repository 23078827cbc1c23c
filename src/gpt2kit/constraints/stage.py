"""The constraint as a stage of the logits pipeline: each constrained row keeps its own matcher.

For rows whose settings carry a constraint, the engine (through pipeline.py) calls:
    check(s)               when the request arrives: a UserError before any work (compiled once per content);
    apply(logits, s, seqs) each step, after logit bias and before temperature, top-k and top-p: the tokens
                           the grammar refuses -> -inf (a row's matcher starts at its first apply);
    accept(s, seq, token)  with the token drawn;
    finished(seq)          after accept: True once the document is complete and nothing may follow it (or
                           <|endoftext|> was drawn): the row stops, finish_reason "stop", no end-of-text shown;
    complete(seq)          when a row stops for another reason (max tokens, a full context): False means its
                           text is not a whole document, so its finish_reason is "length", never "stop".
<|endoftext|> is allowed exactly when the document so far is complete and could go on (a regex `[a-z]+`);
drawing it ends the row whatever stop_at_eot says, and it is not part of the text.
"""

from __future__ import annotations

import numpy as np
import torch

from ..options import SamplingSettings
from ..tokenizer import Tokenizer, gpt2_tokenizer
from .compiler import Compiled, compile_constraint
from .vocabulary import vocabulary_for


class ConstraintStage:
    name = "constraint"

    def __init__(self, tokenizer: Tokenizer | None = None):
        """tokenizer: the model's (a folder may carry its own vocabulary); None: GPT-2's, built on first use."""
        self._tokenizer = tokenizer
        self._executor = None

    @property
    def vocabulary(self):
        return vocabulary_for(self._tokenizer or gpt2_tokenizer())

    def wants(self, s: SamplingSettings) -> bool:
        return s.constraint is not None

    def check(self, s: SamplingSettings) -> Compiled:
        """Compile the settings' constraint (cached by content): a UserError before any work starts."""
        return compile_constraint(s.constraint, self.vocabulary)

    def start(self, s: SamplingSettings, seq) -> None:
        seq.state[self.name] = self.check(s).matcher()

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        """logits (B, V) float32 of rows that share `s` -> a new tensor with every refused token at -inf.
        Ids past the tokenizer's (a model's padded vocabulary) are always refused."""
        refused = self._refused([self._matcher(s, seq) for seq in seqs], logits.size(1))  # (B, V) bool
        return logits.masked_fill(torch.from_numpy(refused).to(logits.device), float("-inf"))

    def accept(self, s: SamplingSettings, seq, token: int) -> None:
        matcher = self._matcher(s, seq)
        if token == self.vocabulary.eot_id and matcher.is_stopped() and not matcher.is_error():
            return  # already complete: an engine that drew once more only sees its end again
        if not matcher.consume_token(token):  # the mask allowed only what it accepts: a bug, not a user mistake
            raise RuntimeError(
                f"the constraint refused token {token}, which its own mask allowed: {matcher.get_error()}"
            )

    def finished(self, seq) -> bool:
        """The document is complete and nothing may follow it (or <|endoftext|> was drawn)."""
        matcher = seq.state.get(self.name)
        return matcher is not None and matcher.is_stopped()

    def complete(self, seq) -> bool:
        """The text so far is a whole document of the constraint."""
        matcher = seq.state.get(self.name)
        return matcher is not None and not matcher.is_error() and (matcher.is_accepting() or matcher.is_stopped())

    def _matcher(self, s: SamplingSettings, seq):
        if self.name not in seq.state:
            self.start(s, seq)
        return seq.state[self.name]

    def _refused(self, matchers: list, width: int) -> np.ndarray:
        """The tokens each matcher refuses next, as (B, width) bool; the masks are computed in parallel in Rust."""
        from llguidance import LLExecutor
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par

        if self._executor is None:
            self._executor = LLExecutor()
        size = min(self.vocabulary.size, width)
        bits = allocate_token_bitmask(len(matchers), self.vocabulary.size)  # (B, ceil(size / 32)) int32
        fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bits)
        refused = np.ones((len(matchers), width), dtype=bool)  # (B, V)
        # Bit j of word w is token 32w + j: in little-endian memory, bit j % 8 of byte 4w + j // 8.
        allowed = np.unpackbits(bits.view(np.uint8), axis=1, count=size, bitorder="little")  # (B, size) 0/1
        np.equal(allowed, 0, out=refused[:, :size])
        return refused
