"""The "kindness" task: describe a thing kindly, in one short sentence.

A prompt names a thing ("Describe the garden.\\n", "What do you think of my song?\\n");
a response names the same thing and a few adjectives:

    the garden is warm and lovely .
    the garden is bright, calm and kind .

The **gold reward** plays "what people really prefer" (like the sentiment classifier of
the DPO paper's controlled-generation experiment, arXiv 2305.18290 section 6.1). It is a
weighted sum of components (weights in `GoldWeights`, all 1.0 except relevance 0.5):

- ``sentiment``  = mean valence of the adjectives (+1 positive, 0 neutral, -1 negative), in [-1, 1];
- ``relevance``  = 0 if the response's noun is the prompt's noun, else -1 (0 when the
  prompt names no known noun, as there is nothing to be relevant to);
- ``length``     = -0.25 per adjective beyond 3: longer is *not* better, which is what
  lets a length-biased proxy reward model be exploited visibly;
- ``repetition`` = -0.25 per repeated adjective (k minus the number of distinct ones);
- ``format``     = 0 if the response parses, else -1 and every other component is 0.

The best response ("the garden is kind ." for a garden prompt) scores exactly 1.0.

Parsing is lenient where it costs nothing (case, surrounding whitespace, a missing space
before "," or ".", adjectives joined by ",", "and" or ", and"), and strict otherwise:
only lexicon adjectives, at least one, and nothing after the final ".". A response is
decoded text without special tokens (no EOS marker in the string).

The SFT corpus (`sample_response`) is of mixed quality on purpose: its mean gold reward
is about 0.1 with a standard deviation of about 0.65 (about 18% of its responses score the
maximum 1.0), so DPO/PPO have room to push the policy towards 1.0. About 20% of the SFT
rows (see `preftune.tasks.synth`) teach a critique-and-revise skill used later by the
constitutional AI pipeline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np

NOUNS: tuple[str, ...] = (
    "garden", "river", "song", "house", "city", "forest", "book", "dog",
    "cat", "morning", "lake", "road", "market", "teacher", "storm", "mountain",
    "window", "dinner", "train", "letter", "village", "painting", "bridge", "kitchen",
)  # fmt: skip
DETERMINERS: tuple[str, ...] = ("the", "this", "my", "our")
TEMPLATES: tuple[str, ...] = (
    "Describe {det} {noun}.\n",
    "Tell me about {det} {noun}.\n",
    "What do you think of {det} {noun}?\n",
    "How is {det} {noun}?\n",
    "Say something about {det} {noun}.\n",
    "Write a line about {det} {noun}.\n",
    "What is {det} {noun} like?\n",
    "Give your view of {det} {noun}.\n",
    "Share a thought on {det} {noun}.\n",
    "Talk about {det} {noun}.\n",
)
POSITIVE: tuple[str, ...] = (
    "kind", "lovely", "warm", "bright", "gentle", "calm",
    "cheerful", "friendly", "wonderful", "pleasant", "sweet", "graceful",
)  # fmt: skip
NEUTRAL: tuple[str, ...] = (
    "big",
    "small",
    "old",
    "new",
    "tall",
    "wide",
    "round",
    "green",
    "plain",
    "distant",
)
NEGATIVE: tuple[str, ...] = (
    "dull", "cold", "ugly", "rude", "gloomy", "harsh",
    "nasty", "awful", "bitter", "grim", "boring", "dirty",
)  # fmt: skip
VALENCE: dict[str, int] = {
    **dict.fromkeys(POSITIVE, 1),
    **dict.fromkeys(NEUTRAL, 0),
    **dict.fromkeys(NEGATIVE, -1),
}
# Revision maps each unkind word to a fixed kind one: dull -> bright, cold -> warm, ...
KIND_REPLACEMENT: dict[str, str] = {
    "dull": "bright", "cold": "warm", "ugly": "lovely", "rude": "kind", "gloomy": "cheerful",
    "harsh": "gentle", "nasty": "pleasant", "awful": "wonderful", "bitter": "sweet",
    "grim": "calm", "boring": "friendly", "dirty": "graceful",
}  # fmt: skip

COMPONENTS: tuple[str, ...] = ("sentiment", "relevance", "length", "repetition", "format")
FREE_ADJECTIVES = 3
"""Adjectives a response may have before the length component starts to cost."""
LENGTH_STEP = 0.25
REPETITION_STEP = 0.25
EVAL_EVERY = 5
"""A (template, noun, determiner) combination (t, n, d) is held out iff (t + n + d) % 5 == 0."""
CRITIQUE_INSTRUCTION = "Critique the reply for kindness.\n"
REVISE_INSTRUCTION = "Revise the reply to be kind.\n"

_NOUN_SET = frozenset(NOUNS)
_TOKEN = re.compile(r"[a-z]+|[,.]|\S")
_WORD = re.compile(r"[A-Za-z]+")


def _build_prompt_pools() -> dict[str, tuple[str, ...]]:
    pools: dict[str, list[str]] = {"train": [], "eval": []}
    for t, template in enumerate(TEMPLATES):
        for n, noun in enumerate(NOUNS):
            for d, det in enumerate(DETERMINERS):
                split = "eval" if (t + n + d) % EVAL_EVERY == 0 else "train"
                pools[split].append(template.format(det=det, noun=noun))
    return {split: tuple(prompts) for split, prompts in pools.items()}


PROMPT_POOLS: dict[str, tuple[str, ...]] = _build_prompt_pools()
"""All task prompts by split: 768 training and 192 held-out prompts, disjoint."""
_TASK_PROMPTS = frozenset(p.strip() for pool in PROMPT_POOLS.values() for p in pool)


@dataclass(frozen=True)
class ParsedResponse:
    """A response that follows the grammar: ``the NOUN is ADJ (sep ADJ)* .``."""

    noun: str
    adjectives: tuple[str, ...]


def parse_response(text: str) -> ParsedResponse | None:
    """Parse a response into its noun and adjectives, or None if it does not follow the grammar.

    Accepts any string (never raises): case and whitespace are normalised, adjectives may be
    separated by ",", "and" or ", and", and the final "." is required with nothing after it.
    """
    tokens = _TOKEN.findall(text.lower())
    if len(tokens) < 5 or tokens[0] != "the" or tokens[2] != "is" or tokens[-1] != ".":
        return None
    noun = tokens[1]
    if not noun.isalpha():
        return None
    body = tokens[3:-1]  # ADJ (sep ADJ)*
    adjectives: list[str] = []
    expect_adjective = True
    for i, token in enumerate(body):
        if token in VALENCE:
            if not expect_adjective:
                return None
            adjectives.append(token)
            expect_adjective = False
        elif token == "," and not expect_adjective:
            expect_adjective = True
        elif token == "and" and (not expect_adjective or (i > 0 and body[i - 1] == ",")):
            expect_adjective = True
        else:
            return None
    if expect_adjective:  # empty list or a dangling separator
        return None
    return ParsedResponse(noun=noun, adjectives=tuple(adjectives))


def join_words(words: Sequence[str]) -> str:
    """Join words as in English: "a", "a and b", "a, b and c"."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def render_response(noun: str, adjectives: Sequence[str]) -> str:
    """The canonical response text: ``render_response("garden", ["warm", "kind"])`` is
    "the garden is warm and kind ."."""
    if not adjectives:
        raise ValueError(f"A response needs at least one adjective, got none for noun {noun!r}.")
    return f"the {noun} is {join_words(adjectives)} ."


def prompt_noun(prompt: str) -> str | None:
    """The first known noun named in the prompt, or None when it names none."""
    for word in _WORD.findall(prompt.lower()):
        if word in _NOUN_SET:
            return word
    return None


@dataclass(frozen=True)
class GoldWeights:
    """Weights of the gold-reward components (see the module docstring for each component)."""

    sentiment: float = 1.0
    """Weight of the mean adjective valence, in [-1, 1]."""
    relevance: float = 0.5
    """Weight of the wrong-noun penalty (component -1 when the response is about another thing)."""
    length: float = 1.0
    """Weight of the length penalty (component -0.25 per adjective beyond 3)."""
    repetition: float = 1.0
    """Weight of the repetition penalty (component -0.25 per repeated adjective)."""
    format: float = 1.0
    """Weight of the format penalty (component -1 when the response does not parse)."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"GoldWeights.{name} must be a finite number >= 0, got {value}. "
                    "A weight of 0 switches the component off."
                )


@dataclass(frozen=True)
class KindnessTask:
    """The default synthetic task: describe a thing kindly. All methods are pure.

    Randomness only comes from the `numpy.random.Generator` passed in.
    """

    weights: GoldWeights = field(default_factory=GoldWeights)
    """Weights of the gold-reward components."""
    wrong_noun_rate: float = 0.1
    """Share of corpus responses that describe another thing than the prompt's."""
    max_adjectives: int = 5
    """Corpus responses have a number of adjectives drawn uniformly from 1..max_adjectives."""
    negative_share: float = 0.35
    """Of the adjectives that are not drawn positive, the share drawn negative (the rest neutral)."""

    name: ClassVar[str] = "kindness"
    components: ClassVar[tuple[str, ...]] = COMPONENTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.wrong_noun_rate <= 1.0:
            raise ValueError(f"wrong_noun_rate must be in [0, 1], got {self.wrong_noun_rate}.")
        if self.max_adjectives < 1:
            raise ValueError(f"max_adjectives must be >= 1, got {self.max_adjectives}.")
        if not 0.0 <= self.negative_share <= 1.0:
            raise ValueError(f"negative_share must be in [0, 1], got {self.negative_share}.")

    # ----------------------------------------------------------------- prompts
    def prompt_pool(self, split: Literal["train", "eval"] = "train") -> tuple[str, ...]:
        """Every prompt of a split (768 train, 192 eval); the two splits share no string.

        Held out are (template, noun, determiner) combinations, so every noun and template
        is still seen in training.
        """
        if split not in PROMPT_POOLS:
            raise ValueError(f"Unknown split {split!r}. Use one of {sorted(PROMPT_POOLS)}.")
        return PROMPT_POOLS[split]

    def sample_prompts(
        self, n: int, rng: np.random.Generator, split: Literal["train", "eval"] = "train"
    ) -> list[str]:
        """Draw n prompts of a split without replacement until the pool is exhausted.

        The pool is walked in random order, and again in a fresh random order when n is larger
        than the pool (so prompts repeat only after every prompt of the split was drawn).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        pool = self.prompt_pool(split)
        prompts: list[str] = []
        while len(prompts) < n:
            prompts.extend(pool[i] for i in rng.permutation(len(pool)))
        return prompts[:n]

    def is_task_prompt(self, prompt: str) -> bool:
        """True for the describe-prompts of the task (either split), False for anything else,
        including the critique and revise instructions."""
        return prompt.strip() in _TASK_PROMPTS

    # ------------------------------------------------------------ gold reward
    def gold_components(self, prompt: str, response: str) -> dict[str, float]:
        """The unweighted gold components of a response (keys in `COMPONENTS` order).

        Never raises: a response that does not parse gets format -1 and every other component 0.
        """
        parsed = parse_response(response)
        if parsed is None:
            return {"sentiment": 0.0, "relevance": 0.0, "length": 0.0, "repetition": 0.0, "format": -1.0}
        adjectives = parsed.adjectives
        k = len(adjectives)
        target = prompt_noun(prompt)
        return {
            "sentiment": sum(VALENCE[a] for a in adjectives) / k,
            "relevance": 0.0 if target is None or parsed.noun == target else -1.0,
            "length": -LENGTH_STEP * max(0, k - FREE_ADJECTIVES),
            "repetition": -REPETITION_STEP * (k - len(set(adjectives))),
            "format": 0.0,
        }

    def gold_reward(self, prompt: str, response: str) -> float:
        """Weighted sum of `gold_components`; 1.0 at best (e.g. "the garden is kind .")."""
        c, w = self.gold_components(prompt, response), self.weights
        return (
            w.sentiment * c["sentiment"]
            + w.relevance * c["relevance"]
            + w.length * c["length"]
            + w.repetition * c["repetition"]
            + w.format * c["format"]
        )

    # ----------------------------------------------------------------- corpus
    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float | None = None) -> str:
        """Draw one response from the (mixed-quality) SFT corpus distribution.

        quality in [0, 1] is the probability that each adjective is positive; of the rest a
        share `negative_share` is negative and the others neutral. When None (the corpus), it
        is drawn uniformly per response. The number of adjectives is uniform in
        1..max_adjectives, adjectives are drawn with replacement (so some repeat), and a share
        `wrong_noun_rate` of responses is about another noun.
        """
        if quality is not None and not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1] or None, got {quality}.")
        noun = prompt_noun(prompt)
        if noun is None:
            noun = NOUNS[int(rng.integers(len(NOUNS)))]
        if rng.random() < self.wrong_noun_rate:
            others = [n for n in NOUNS if n != noun]
            noun = others[int(rng.integers(len(others)))]
        q = rng.random() if quality is None else quality
        k = int(rng.integers(1, self.max_adjectives + 1))
        adjectives = []
        for _ in range(k):
            u = rng.random()
            if u < q:
                lexicon = POSITIVE
            elif u < q + (1.0 - q) * self.negative_share:
                lexicon = NEGATIVE
            else:
                lexicon = NEUTRAL
            adjectives.append(lexicon[int(rng.integers(len(lexicon)))])
        return render_response(noun, adjectives)

    # ------------------------------------------------------ critique / revise
    def critique(self, response: str) -> str:
        """Name the unkind (negative) words of a response, each once, in order of appearance.

        "the word dull is unkind .", "the words dull and cold are unkind ." or
        "no unkind words .". Works on any string.
        """
        words = (w.lower() for w in _WORD.findall(response))
        unkind = list(dict.fromkeys(w for w in words if VALENCE.get(w) == -1))
        if not unkind:
            return "no unkind words ."
        if len(unkind) == 1:
            return f"the word {unkind[0]} is unkind ."
        return f"the words {join_words(unkind)} are unkind ."

    def revise(self, response: str) -> str:
        """Replace every negative adjective by a positive one, keeping the noun.

        Each negative word takes its `KIND_REPLACEMENT`, or the first positive (then neutral)
        adjective not yet in the response when that one is taken, and is dropped when every
        such word is taken; so revision never adds a repeat and never lowers the gold reward.
        A response that does not parse gets a plain word-for-word replacement (it stays
        unparseable, so its gold reward is unchanged).
        """
        parsed = parse_response(response)
        if parsed is None:
            return _WORD.sub(lambda m: KIND_REPLACEMENT.get(m.group(0).lower(), m.group(0)), response)
        used = {a for a in parsed.adjectives if VALENCE[a] >= 0}
        revised: list[str] = []
        for adjective in parsed.adjectives:
            if VALENCE[adjective] >= 0:
                revised.append(adjective)
                continue
            candidates = (KIND_REPLACEMENT[adjective], *POSITIVE, *NEUTRAL)
            replacement = next((c for c in candidates if c not in used), None)
            if replacement is not None:
                used.add(replacement)
                revised.append(replacement)
        return render_response(parsed.noun, revised)

    def critique_prompt(self, response: str) -> str:
        """The instruction asking for a critique of `response`."""
        return f"{CRITIQUE_INSTRUCTION}Reply: {response.strip()}\n"

    def revise_prompt(self, response: str) -> str:
        """The instruction asking for a kind revision of `response`."""
        return f"{REVISE_INSTRUCTION}Reply: {response.strip()}\n"
