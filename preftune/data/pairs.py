"""Batches of preference pairs: padded (two sequences per pair) or prefix-shared and packed.

Both layouts return the same index tensors, so a trainer reads scores and log-probs the
same way whichever layout it got:

- `chosen_index`, `rejected_index` (B,): flat index into the (R*T) token grid of the last
  token of each pair's chosen / rejected sequence (where a reward model's score is read);
- `response_logit_index`, `response_target`, `response_seq` (M,), one entry per response
  token of all 2B sequences: the flat index of the logits that predict it, its token id,
  and its sequence (pair i's chosen is sequence i, its rejected is sequence B + i).

Padded: 2B rows (chosen first, then rejected), right-padded to the longest, laid out by
`collate_responses`, which also batches single prompt + response sequences (KTO, scoring
sampled responses) with the same response index tensors.
Prefix-shared (DESIGN.md section 4): one block per pair, [prompt][chosen][rejected],
where the rejected block attends to the prompt but not to the chosen block and its
positions restart after the prompt, so the prompt is computed once and each response
sees exactly the context it would see alone. Pairs are packed first-fit into rows no
longer than the longest pair (so no row is longer than it needs to be), with a
block-diagonal mask between pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from preftune.data.collate import first_fit
from preftune.data.config import DataConfig
from preftune.data.formats import SOFT_LABEL, parse_pairs
from preftune.data.io import load_rows
from preftune.data.tokenize import EncodedExample, EncodedPair, EncodeReport, encode_dataset
from preftune.ops.masks import prefix_sharing_mask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_pairs(
    tokenizer: PreTrainedTokenizerBase, source: str, split: str, config: DataConfig, name: str
) -> tuple[list[EncodedPair], EncodeReport]:
    """Read, validate and encode the preference pairs of `source` (split or slice `split`) by the
    data config's length, truncation and skip rules; the report is logged under `name`."""
    parsed = parse_pairs(
        load_rows(source, split), skip_invalid=config.skip_invalid, dialogue_format=config.dialogue_format
    )
    pairs, report = encode_dataset(
        tokenizer, parsed, config.max_length, config.truncation, skip_invalid=config.skip_invalid
    )
    report.log(f"{name} pairs")
    return pairs, report


def chosen_probabilities(pairs: Sequence[EncodedPair]) -> Tensor | None:
    """(B,) float32 soft labels P(chosen is truly preferred) of the `chosen_probability` column (1 where a
    pair has none), or None when no pair in `pairs` has one (all hard labels)."""
    if not any(SOFT_LABEL in pair.meta for pair in pairs):
        return None
    return torch.tensor([float(pair.meta.get(SOFT_LABEL, 1.0)) for pair in pairs])


def pair_block_size(pair: EncodedPair) -> int:
    """Tokens of the pair's [prompt][chosen][rejected] block: the prompt counted once."""
    return len(pair.chosen) + len(pair.rejected) - pair.chosen.num_prompt_tokens


def collate_pairs_padded(pairs: Sequence[EncodedPair], pad_token_id: int) -> dict[str, Tensor]:
    """2B right-padded rows, chosen sequences first (`collate_responses` of chosen + rejected).

    Returns input_ids (2B, T), attention_mask (2B, T) long, position_ids (2B, T), the index
    tensors of the module docstring, and num_tokens () (non-pad tokens).
    """
    _check_pairs(pairs, pad_token_id)
    batch = collate_responses(
        [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_token_id
    )
    rows, T = batch["input_ids"].shape
    last = torch.arange(rows) * T + batch["attention_mask"].sum(dim=1) - 1  # (2B,) each row's last token
    B = len(pairs)
    return {**batch, "chosen_index": last[:B], "rejected_index": last[B:]}


def collate_responses(examples: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """B right-padded prompt + response sequences, scored at their response tokens.

    Returns input_ids (B, T), attention_mask (B, T) long, position_ids (B, T), num_tokens ()
    (non-pad tokens), and per response token (M,): `response_logit_index` (flat index into the
    B*T positions of the logits that predict it), `response_target` (its id) and `response_seq`
    (its row b), as in preftune/data/pairs.py.
    """
    if not examples:
        raise ValueError("Cannot build a batch from no examples.")
    T = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)
    logit_index, targets, seq_of = [], [], []
    for b, example in enumerate(examples):
        n, start = len(example), example.num_prompt_tokens
        if not 1 <= start < n:
            raise ValueError(
                f"Row {example.row}: needs at least one prompt and one response token, got {start} prompt "
                f"tokens of {n} (encode with encode_prompt_response)."
            )
        input_ids[b, :n] = torch.tensor(example.input_ids)
        attention_mask[b, :n] = 1
        logit_index.extend(range(b * T + start - 1, b * T + n - 1))  # position t predicts token t + 1
        targets.extend(example.input_ids[start:])
        seq_of.extend([b] * (n - start))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (torch.arange(T).expand(len(examples), T) * attention_mask).contiguous(),
        "response_logit_index": torch.tensor(logit_index, dtype=torch.long),
        "response_target": torch.tensor(targets, dtype=torch.long),
        "response_seq": torch.tensor(seq_of, dtype=torch.long),
        "num_tokens": attention_mask.sum(),
    }


def collate_pairs_packed(
    pairs: Sequence[EncodedPair], pad_token_id: int, mask_dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Prefix-shared pair blocks packed first-fit into rows as long as the longest block.

    Returns input_ids (R, T), attention_mask (R, 1, T, T) from `prefix_sharing_mask`
    (additive float32 by default; torch.bool for sdpa only), position_ids (R, T), the index
    tensors of the module docstring, and num_tokens () (tokens in blocks, not padding).
    """
    _check_pairs(pairs, pad_token_id)
    sizes = [pair_block_size(pair) for pair in pairs]
    T = max(sizes)
    rows = first_fit(sizes, T)
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), T), dtype=torch.long)
    segment_ids = torch.zeros((len(rows), T), dtype=torch.long)
    branch_ids = torch.zeros((len(rows), T), dtype=torch.long)
    chosen_last, rejected_last = [0] * len(pairs), [0] * len(pairs)
    chosen_tokens: list[tuple[list[int], list[int]]] = [([], [])] * len(pairs)
    rejected_tokens: list[tuple[list[int], list[int]]] = [([], [])] * len(pairs)
    for r, row in enumerate(rows):
        offset = 0
        for segment, i in enumerate(row, start=1):
            pair = pairs[i]
            P = pair.chosen.num_prompt_tokens
            chosen, rejected = pair.chosen.input_ids[P:], pair.rejected.input_ids[P:]
            block = slice(offset, offset + sizes[i])
            input_ids[r, block] = torch.tensor(pair.chosen.input_ids + rejected)
            position_ids[r, block] = torch.tensor([*range(P + len(chosen)), *range(P, P + len(rejected))])
            segment_ids[r, block] = segment
            branch_ids[r, offset + P : offset + P + len(chosen)] = 1
            branch_ids[r, offset + P + len(chosen) : offset + sizes[i]] = 2
            base = r * T + offset  # flat index of the block's first token
            chosen_start, rejected_start = base + P, base + P + len(chosen)
            chosen_last[i] = rejected_start - 1
            rejected_last[i] = rejected_start + len(rejected) - 1
            # Chosen token t is predicted at t - 1; the first rejected token by the last prompt token.
            chosen_tokens[i] = (list(range(chosen_start - 1, rejected_start - 1)), chosen)
            rejected_logits = [chosen_start - 1, *range(rejected_start, rejected_start + len(rejected) - 1)]
            rejected_tokens[i] = (rejected_logits, rejected)
            offset += sizes[i]
    logit_index, targets, seq_of = [], [], []
    for s, (logits, tokens) in enumerate(chosen_tokens + rejected_tokens):
        logit_index.extend(logits)
        targets.extend(tokens)
        seq_of.extend([s] * len(tokens))
    return {
        "input_ids": input_ids,
        "attention_mask": prefix_sharing_mask(segment_ids, branch_ids, mask_dtype),
        "position_ids": position_ids,
        **_indices(chosen_last, rejected_last, logit_index, targets, seq_of),
        "num_tokens": torch.tensor(sum(sizes)),
    }


def collate_pairs(
    pairs: Sequence[EncodedPair],
    pad_token_id: int,
    packed: bool,
    mask_dtype: torch.dtype,
    device: torch.device,
) -> dict[str, Tensor]:
    """`pairs` as one batch on `device`: packed [prompt][chosen][rejected] blocks (collate_pairs_packed) when
    `packed`, else padded rows (collate_pairs_padded)."""
    if packed:
        batch = collate_pairs_packed(pairs, pad_token_id, mask_dtype)
    else:
        batch = collate_pairs_padded(pairs, pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


def _indices(
    chosen_last: list[int],
    rejected_last: list[int],
    logit_index: list[int],
    targets: list[int],
    seq_of: list[int],
) -> dict[str, Tensor]:
    return {
        "chosen_index": torch.tensor(chosen_last, dtype=torch.long),
        "rejected_index": torch.tensor(rejected_last, dtype=torch.long),
        "response_logit_index": torch.tensor(logit_index, dtype=torch.long),
        "response_target": torch.tensor(targets, dtype=torch.long),
        "response_seq": torch.tensor(seq_of, dtype=torch.long),
    }


def _check_pairs(pairs: Sequence[EncodedPair], pad_token_id: int | None) -> None:
    if not pairs:
        raise ValueError("Cannot build a batch from no pairs.")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: set tokenizer.pad_token before batching.")
    for pair in pairs:
        P = pair.chosen.num_prompt_tokens
        if (
            P < 1
            or pair.rejected.num_prompt_tokens != P
            or pair.chosen.input_ids[:P] != pair.rejected.input_ids[:P]
        ):
            raise ValueError(
                f"Row {pair.row}: chosen and rejected must start with the same, non-empty prompt tokens "
                "(encode pairs with encode_pair)."
            )
        if len(pair.chosen) == P or len(pair.rejected) == P:
            raise ValueError(f"Row {pair.row}: a response has no tokens.")
