"""Dialogue transcripts written as text, read as message lists (`--dialogue_format hh`).

HH-RLHF (Bai et al. 2022) stores each conversation as one string of turns:

    "\\n\\nHuman: How do I bake bread?\\n\\nAssistant: Start with flour ...\\n\\nHuman: ..."

A chat model must see such a conversation through its own chat template, so `hh_to_messages`
turns it into `[{"role": "user", ...}, {"role": "assistant", ...}, ...]`: a turn starts at a line
that begins with "Human:" or "Assistant:" after a blank line (or at the start of the text); its
content is stripped of surrounding whitespace. A final "Assistant:" with nothing after it becomes an
empty assistant turn (which the pair validation then reports as an empty response). Text before the
first marker, or a transcript without any, is an error: the data is then not HH-formatted.
"""

from __future__ import annotations

import re
from typing import Literal

DialogueFormat = Literal["text", "hh"]
DIALOGUE_FORMATS = ("text", "hh")

HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class NotADialogue(ValueError):
    """The text is not a transcript in the requested dialogue format."""


def hh_to_messages(text: str) -> list[dict[str, str]]:
    """The turns of an HH-RLHF transcript as chat messages (module docstring)."""
    stripped = text.lstrip("\n")
    markers = list(_HH_TURN.finditer(stripped))
    if not markers:
        raise NotADialogue('no "Human:" or "Assistant:" turn')
    if markers[0].start() != 0:
        raise NotADialogue(f"text before the first turn marker: {stripped[: markers[0].start()][:40]!r}")
    messages = []
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        end = following.start() if following is not None else len(stripped)
        messages.append({"role": HH_ROLES[marker.group(1)], "content": stripped[marker.end() : end].strip()})
    return messages
