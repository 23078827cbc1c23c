"""Keywords of a document, for keyword-conditioned generation (as in minimaxir's gpt-2-keyword-generation):
encode puts them before each document through a template's {keywords} field, and at generation time the
user's own keywords take their place.

The method is RAKE (Rose et al. 2010, "Automatic keyword extraction from individual documents"): stopwords
and punctuation split the text into candidate phrases; a word scores its degree (how many words it shares
phrases with, itself included) over its frequency, a phrase the sum of its words. It needs one document
at a time and no model, so encoding stays one streaming pass with no new dependency.
"""

from __future__ import annotations

import re

DEFAULT_COUNT = 5  # keywords per document when --keywords gives no number
SEPARATOR = ", "  # between keywords in the {keywords} field
MAX_PHRASE_WORDS = 3  # longer runs without a stopword are lists or noise, not key phrases

# Common English function words and verbs: they split phrases and are never keywords themselves.
STOPWORDS = frozenset(
    """
a about above after again against all almost also although always am among an and another any anyone
anything are aren't around as at be because been before being below between both but by can can't cannot
could couldn't did didn't do does doesn't doing don't done down during each either else enough even ever
every few for from further get gets getting give given go goes going gone got had hadn't has hasn't have
haven't having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll
i'm i've if in into is isn't it it's its itself just know let let's like made make makes many may me might
more most much must mustn't my myself need never new no nor not now of off often on once one only or other
others our ours ourselves out over own per perhaps put quite rather really said same say says see seem
seemed seems several shall shan't she she'd she'll she's should shouldn't since so some something still
such take than that that's the their theirs them themselves then there there's these they they'd they'll
they're they've thing things this those though through thus to too toward towards under until up upon us
use used using very via was wasn't way we we'd we'll we're we've well were weren't what what's whatever
when when's where where's whether which while who who's whom whose why why's will with within without
won't would wouldn't yet you you'd you'll you're you've your yours yourself yourselves
""".split()
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")  # letters and digits, with inner apostrophes (don't)
_BREAK = re.compile(r"[.,;:!?()\[\]{}\"“”…—–|/\\\n]+|\s-\s")  # punctuation that ends a phrase


def _phrases(text: str) -> list[list[str]]:
    """Candidate phrases: runs of non-stopwords between stopwords and punctuation, lower-cased."""
    phrases = []
    for chunk in _BREAK.split(text):
        run: list[str] = []
        for word in _WORD.findall(chunk.lower().replace("’", "'")):
            if word in STOPWORDS or word.isdigit() or len(word) < 2:
                if run:
                    phrases.append(run)
                run = []
            else:
                run.append(word)
        if run:
            phrases.append(run)
    return [p for p in phrases if len(p) <= MAX_PHRASE_WORDS]


def extract_keywords(text: str, count: int = DEFAULT_COUNT) -> list[str]:
    """The `count` best-scoring key phrases of `text`, best first (ties: first seen first). Deterministic."""
    phrases = _phrases(text)
    freq: dict[str, int] = {}
    degree: dict[str, int] = {}
    for phrase in phrases:
        for word in phrase:
            freq[word] = freq.get(word, 0) + 1
            degree[word] = degree.get(word, 0) + len(phrase)
    scores: dict[str, float] = {}
    for phrase in phrases:  # dicts keep first-seen order, which breaks ties
        key = " ".join(phrase)
        if key not in scores:
            scores[key] = sum(degree[w] / freq[w] for w in phrase)
    ranked = sorted(scores, key=lambda k: -scores[k])
    return ranked[:count]
