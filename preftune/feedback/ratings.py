"""Pairwise ratings as arrays: one entry per rating, grouped into items.

An **item** is one pair of responses to one prompt. Its key is the row's `pair_id` when the
row has one (the same id on every rating of that pair), else the tuple (prompt text, the two
response texts in sorted order), so a pair rated twice in either order is one item. The
item's canonical response **"a"** is the lexicographically smaller of its two response texts,
and a rating's **vote** is 1 when the rater chose "a", 0 otherwise. Conversational prompts and
responses are compared by their text (`completion_text`).

    parsed = parse_pairs(load_rows("pairs.jsonl"))
    ratings = ratings_from_rows(parsed.examples)
    ratings.votes        # (R,) int64, 1 = the rater chose the item's response "a"
    ratings.item_index   # (R,) int64, index into ratings.items
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from preftune.data import Completion, PairExample, Prompt


def completion_text(value: Prompt | Completion) -> str:
    """The text of a prompt or response: itself, or its messages' contents joined by newlines
    (each prefixed with its role, so a user turn and an assistant turn with equal text differ)."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{message['role']}: {message['content']}" for message in value)


def response_text(value: Completion) -> str:
    """The text a reader sees in a response: itself, or its messages' contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(message["content"] for message in value)


def num_words(text: str) -> int:
    """Length in whitespace-separated words, the unit of every length statistic here."""
    return len(text.split())


@dataclass(frozen=True)
class Ratings:
    """Ratings of pairwise items, one entry per rating (R ratings of I items).

    Metadata absent from a row is None (strings), NaN (`order`) or -1 (`chose_first`).
    """

    items: list[Hashable]
    """Item keys, in order of first appearance; `item_index` points into this list."""
    item_index: np.ndarray
    """(R,) int64: the rated item."""
    votes: np.ndarray
    """(R,) int64: 1 when the rater chose the item's response "a" (the smaller text)."""
    annotators: list[str | None]
    """(R,) the rater's id as text (`annotator` column), or None."""
    groups: list[str | None]
    """(R,) the rater's group as text (`annotator_group` column), or None."""
    order: np.ndarray
    """(R,) float64: the item's position in the rater's session (`order`), NaN when unknown."""
    chose_first: np.ndarray
    """(R,) int64: 1 when the rater chose the response shown first, 0 when not, -1 when unknown."""
    a_words: np.ndarray
    """(R,) int64: words in the item's response "a"."""
    b_words: np.ndarray
    """(R,) int64: words in the item's response "b"."""
    rows: np.ndarray
    """(R,) int64: the row number in the source, for messages."""

    def __len__(self) -> int:
        return len(self.votes)

    @property
    def chose_longer(self) -> np.ndarray:
        """(R,) float64: 1 when the rater chose the response with more words, 0 when the shorter
        one, NaN when both have as many words."""
        a_longer = np.sign(self.a_words - self.b_words).astype(np.float64)  # +1 a longer, -1 b longer
        chose = np.where(self.votes == 1, a_longer, -a_longer)
        return np.where(a_longer == 0, np.nan, (chose > 0).astype(np.float64))

    @property
    def has_annotators(self) -> bool:
        return len(self.annotators) > 0 and all(a is not None for a in self.annotators)

    @property
    def has_groups(self) -> bool:
        return len(self.groups) > 0 and all(g is not None for g in self.groups)

    def subset(self, keep: np.ndarray) -> Ratings:
        """The ratings where `keep` (R,) bool is True, items renumbered in order of first appearance."""
        rows = np.flatnonzero(keep)
        first_seen = np.unique(self.item_index[rows], return_index=True)[1]
        old_items = self.item_index[rows][np.sort(first_seen)]  # kept item ids, in order of first appearance
        renumber = {int(old): new for new, old in enumerate(old_items)}
        return Ratings(
            items=[self.items[int(old)] for old in old_items],
            item_index=np.array([renumber[int(i)] for i in self.item_index[rows]], dtype=np.int64),
            votes=self.votes[rows],
            annotators=[self.annotators[r] for r in rows],
            groups=[self.groups[r] for r in rows],
            order=self.order[rows],
            chose_first=self.chose_first[rows],
            a_words=self.a_words[rows],
            b_words=self.b_words[rows],
            rows=self.rows[rows],
        )


def item_key(pair: PairExample) -> Hashable:
    """The item a row rates: ("pair_id", id) when it has one, else (prompt, sorted responses)."""
    if "pair_id" in pair.meta:
        return ("pair_id", pair.meta["pair_id"])
    first, second = sorted((response_text(pair.chosen), response_text(pair.rejected)))
    return (completion_text(pair.prompt), first, second)


def ratings_from_rows(rows: Sequence[PairExample]) -> Ratings:
    """Ratings of validated pairs (`preftune.data.parse_pairs(...).examples`), one per row.

    Rows that share a `pair_id` must rate the same two responses (in either order) to the same
    prompt; a ValueError names the rows otherwise.
    """
    keys: dict[Hashable, int] = {}
    texts: list[tuple[str, str, str]] = []  # per item: (prompt, a, b), a the smaller text
    item_index, votes, chose_first, a_words, b_words, order = [], [], [], [], [], []
    annotators: list[str | None] = []
    groups: list[str | None] = []
    for pair in rows:
        chosen, rejected = response_text(pair.chosen), response_text(pair.rejected)
        a, b = sorted((chosen, rejected))
        key = item_key(pair)
        prompt = completion_text(pair.prompt)
        if key not in keys:
            keys[key] = len(keys)
            texts.append((prompt, a, b))
        index = keys[key]
        if texts[index] != (prompt, a, b):
            raise ValueError(
                f"Row {pair.row} has pair_id {pair.meta['pair_id']!r} but another prompt or other responses than "
                "an earlier row with that pair_id. Give every rating of one pair the same prompt and two "
                "responses, or distinct ids."
            )
        item_index.append(index)
        votes.append(int(chosen == a))
        shown = pair.meta.get("shown_first")
        chose_first.append(-1 if shown is None else int(shown == "chosen"))
        a_words.append(num_words(a))
        b_words.append(num_words(b))
        order.append(float(pair.meta["order"]) if "order" in pair.meta else float("nan"))
        annotator, group = pair.meta.get("annotator"), pair.meta.get("annotator_group")
        annotators.append(None if annotator is None else str(annotator))
        groups.append(None if group is None else str(group))
    return Ratings(
        items=list(keys),
        item_index=np.asarray(item_index, dtype=np.int64),
        votes=np.asarray(votes, dtype=np.int64),
        annotators=annotators,
        groups=groups,
        order=np.asarray(order, dtype=np.float64),
        chose_first=np.asarray(chose_first, dtype=np.int64),
        a_words=np.asarray(a_words, dtype=np.int64),
        b_words=np.asarray(b_words, dtype=np.int64),
        rows=np.asarray([pair.row for pair in rows], dtype=np.int64),
    )
