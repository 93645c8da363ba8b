"""Deterministic completion text for the emulator.

No model here: the continuation is picked from canned sentences by a hash of the
prompt and the sampling parameters, so the same request always gets the same
text and different choices differ. Tokens are whitespace-separated words (each
word keeps its leading space), which is what ``max_tokens`` and ``usage`` count.
The first clause reads as the continuation of a sentence, e.g. for "The food was
delicious and the waiter" it continues " was friendly and attentive ... evening."
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

CONTINUATIONS = (
    " was friendly and attentive throughout the evening.",
    " recommended a wine that went perfectly with the meal.",
    " brought our dishes out quickly and checked on us often.",
    " made sure our glasses were never empty.",
    " explained every dish on the menu with real enthusiasm.",
    " remembered our order without writing anything down.",
)
SENTENCES = (
    " We stayed for dessert and coffee.",
    " The dining room was quiet and warm.",
    " Prices were fair for the quality of the food.",
    " We will certainly come back next month.",
    " The chef came out to greet every table.",
    " It was one of the best evenings we had this year.",
    " The bread was baked fresh that morning.",
    " Our friends loved the place as much as we did.",
)
VOCABULARY = (" the", " a", " and", " was", " very", " good", " we", " it", " of", " to")


def tokens_of(text: str) -> list[str]:
    """Whitespace tokens, each keeping the whitespace before it."""
    out: list[str] = []
    word = ""
    for char in text:
        if char.isspace() and word.strip():
            out.append(word)
            word = ""
        word += char
    if word:
        out.append(word)
    return out


def count_tokens(text: str) -> int:
    return len(text.split())


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: list[str]
    finish_reason: str


def generate(prompt: str, *, choice: int, max_tokens: int, stop: list[str],
             temperature: float, top_p: float, seed: int | None, suffix: str | None) -> Generated:
    """One choice's continuation of ``prompt``."""
    # At temperature 0 every choice is the same argmax answer.
    rng = _rng(prompt, suffix, seed) if temperature == 0 else _rng(prompt, suffix, seed, temperature, top_p, choice)
    words = tokens_of(rng.choice(CONTINUATIONS))
    for _ in range(rng.randint(0, 2)):
        words += tokens_of(rng.choice(SENTENCES))
    finish = "stop"
    if len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    text = "".join(words)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
        words = tokens_of(text)
    return Generated(text, words, finish)


def logprobs_for(tokens: list[str], offset: int, top: int) -> dict:
    """A well-formed ``logprobs`` block: made-up but deterministic probabilities."""
    token_logprobs, top_logprobs, text_offset = [], [], []
    for token in tokens:
        rng = _rng("logprob", token)
        chosen = -round(rng.random() * 2, 6)
        alternatives = {token: chosen}
        for alt in rng.sample(VOCABULARY, k=max(0, min(top, len(VOCABULARY)) - 1)):
            alternatives.setdefault(alt, chosen - round(1 + rng.random() * 3, 6))
        token_logprobs.append(chosen)
        top_logprobs.append(alternatives)
        text_offset.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs, "text_offset": text_offset}
