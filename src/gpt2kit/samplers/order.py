"""The order of the samplers in sampling.py's pipeline, and why.

    penalties (repetition, presence, frequency), logit_bias
    Dry          before temperature: a penalty on the raw logits, as the other penalties (llama.cpp's chain:
                 penalties, dry, top_n_sigma, top_k, typical, top_p, min_p, xtc, temperature). It also runs
                 at temperature 0, where loops are worst.
    TopNSigma    before top-k, so its deviation is the whole row's (llama.cpp: right after dry). Temperature
                 scales the gap to the largest logit and the deviation alike: the same set before or after it.
    temperature, top-k, top-p
    MinP, TypicalP, EpsilonCutoff, EtaCutoff
                 after top-p, in transformers' order (temperature, top_k, top_p, min_p, typical_p,
                 epsilon_cutoff, eta_cutoff), whose warpers they match (transformers puts min-p after
                 temperature on purpose; llama.cpp's default applies temperature last).
    Xtc          after min-p, as in llama.cpp; after temperature, so its threshold is on the draw's probabilities.
    MirostatV2   last: it truncates what the draw sees, and accept() reads the drawn token's probability among
                 what it kept. With mirostat on, the truncations above (and top-k, top-p) are off, as in
                 llama.cpp; the penalties and DRY stay, as they are not truncations.

A stage's `before_temperature` says which side of temperature it goes. At temperature 0 the stages after
it turn themselves off (their `wants`), as top-k and top-p do: greedy takes the top token whatever they cut.
"""

from __future__ import annotations

from .dry import Dry
from .mirostat import MirostatV2
from .truncation import EpsilonCutoff, EtaCutoff, MinP, TopNSigma, TypicalP
from .xtc import Xtc


def stages(tokenizer=None) -> list:
    """The stages in order; DRY reads its breakers in `tokenizer`'s tokens (None: GPT-2's own vocabulary)."""
    return [Dry(tokenizer), TopNSigma(), MinP(), TypicalP(), EpsilonCutoff(), EtaCutoff(), Xtc(), MirostatV2()]


STAGES = stages()  # for GPT-2's vocabulary; a model with its own builds stages(lm.tokenizer)
