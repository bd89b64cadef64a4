"""Pair batches: the prefix-shared packed layout gives the same log-probs and scores as padded
batches and as each sequence run alone, and scores are read at the last real token."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForSequenceClassification

from preftune.data import PairExample, encode_pair
from preftune.data.pairs import collate_pairs_packed, collate_pairs_padded, pair_block_size
from preftune.models.scalar import PooledScorer
from preftune.models.tiny import build_tiny_model
from preftune.ops.masks import block_causal_mask, prefix_sharing_mask

_TEXT_PAIRS = [
    ("what is two plus two?", " four", " sorry"),
    ("hello", " hello world the quick brown fox", " what"),
    ("Human: question 3?\n\nAssistant:", " answer 3.", " the lazy dog jumps over a lazy dog"),
    ("the", " sure", " sure sure"),
    ("a quick brown fox jumps over the lazy dog and the dog", " hello", " world"),
]


def _pairs(tokenizer, chat: bool):
    examples = []
    for row, (prompt, chosen, rejected) in enumerate(_TEXT_PAIRS):
        if chat:
            example = PairExample(
                [{"role": "user", "content": prompt}],
                [{"role": "assistant", "content": chosen.strip()}],
                [{"role": "assistant", "content": rejected.strip()}],
                None, None, {}, row,
            )  # fmt: skip
        else:
            example = PairExample(prompt, chosen, rejected, None, None, {}, row)
        examples.append(encode_pair(tokenizer, example, max_length=64))
    return examples


def _sequence_logps(logits, batch, num_sequences):
    """(2B,) summed log-probs of each response from the flat logits and the batch's index tensors."""
    flat = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    token_logps = flat[batch["response_logit_index"], batch["response_target"]]
    return torch.zeros(num_sequences).index_add_(0, batch["response_seq"], token_logps)


def _alone_logps(model, sequence):
    ids = torch.tensor([sequence.input_ids])
    logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = sequence.num_prompt_tokens
    return sum(logps[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))


def test_prefix_sharing_mask_by_hand():
    # one pair: prompt (2 tokens), chosen (2), rejected (1); then padding
    segment_ids = torch.tensor([[1, 1, 1, 1, 1, 0]])
    branch_ids = torch.tensor([[0, 0, 1, 1, 2, 0]])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # rejected sees the prompt and itself, not the chosen block
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(prefix_sharing_mask(segment_ids, branch_ids)[0, 0], expected)
    no_branches = torch.zeros_like(branch_ids)
    assert torch.equal(prefix_sharing_mask(segment_ids, no_branches), block_causal_mask(segment_ids))


def test_packed_layout_shares_the_prompt_and_restarts_positions(tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, chat=False)
    batch = collate_pairs_packed(pairs, tiny_tokenizer.pad_token_id, torch.bool)
    padded = collate_pairs_padded(pairs, tiny_tokenizer.pad_token_id)
    assert batch["num_tokens"].item() == sum(pair_block_size(p) for p in pairs)
    assert batch["num_tokens"].item() < padded["num_tokens"].item()  # each prompt once
    assert batch["input_ids"].shape[1] == max(pair_block_size(p) for p in pairs)
    assert batch["input_ids"].shape[0] < len(pairs)  # several pairs share a row
    flat_ids, flat_pos = batch["input_ids"].reshape(-1), batch["position_ids"].reshape(-1)
    for i, pair in enumerate(pairs):
        # the score positions hold each response's last token (EOS) at its unpacked position
        assert flat_ids[batch["chosen_index"][i]] == pair.chosen.input_ids[-1]
        assert flat_ids[batch["rejected_index"][i]] == pair.rejected.input_ids[-1]
        assert flat_pos[batch["chosen_index"][i]] == len(pair.chosen) - 1
        assert flat_pos[batch["rejected_index"][i]] == len(pair.rejected) - 1
    assert torch.equal(batch["response_target"].sort().values, padded["response_target"].sort().values)


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_log_probs_equal_padded_and_alone(tiny_tokenizer, chat, attention):
    model = build_tiny_model(tiny_tokenizer, seed=0).eval()
    model.config._attn_implementation = attention
    pairs = _pairs(tiny_tokenizer, chat)
    mask_dtype = torch.bool if attention == "sdpa" else torch.float32
    packed = collate_pairs_packed(pairs, tiny_tokenizer.pad_token_id, mask_dtype)
    padded = collate_pairs_padded(pairs, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        results = [
            _sequence_logps(model(**{k: b[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits,
                            b, 2 * len(pairs))
            for b in (packed, padded)
        ]  # fmt: skip
        alone = torch.tensor(
            [_alone_logps(model, s) for s in [p.chosen for p in pairs] + [p.rejected for p in pairs]]
        )
    torch.testing.assert_close(results[0], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(results[1], alone, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def classifier(tiny_tokenizer):
    causal = build_tiny_model(tiny_tokenizer, seed=0)
    config = causal.config
    config.num_labels = 3
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.model.load_state_dict(causal.model.state_dict())
    return model


def _alone_scores(classifier, sequence):
    ids = torch.tensor([sequence.input_ids])
    return classifier(input_ids=ids).logits[0]  # one unpadded sequence: the last token


def test_pooled_scores_equal_scores_of_each_sequence_alone(tiny_tokenizer, classifier):
    pairs = _pairs(tiny_tokenizer, chat=False)
    scorer = PooledScorer(classifier)
    alone = torch.stack(
        [_alone_scores(classifier, s) for s in [p.chosen for p in pairs] + [p.rejected for p in pairs]]
    )
    with torch.no_grad():
        for batch in (
            collate_pairs_packed(pairs, tiny_tokenizer.pad_token_id, torch.bool),
            collate_pairs_padded(pairs, tiny_tokenizer.pad_token_id),
        ):
            index = torch.cat([batch["chosen_index"], batch["rejected_index"]])
            scores = scorer(batch["input_ids"], batch["attention_mask"], batch["position_ids"], index)
            assert scores.shape == (2 * len(pairs), 3)
            torch.testing.assert_close(scores, alone, rtol=0, atol=1e-5)


def test_pooling_is_right_when_pad_is_eos_where_transformers_pooling_is_not(tiny_tokenizer, classifier):
    eos = tiny_tokenizer.eos_token_id
    sequences = [[1, 40, 41, 42, eos], [1, 50, eos]]  # every response ends with EOS
    alone = torch.stack([classifier(input_ids=torch.tensor([s])).logits[0] for s in sequences])
    scorer = PooledScorer(classifier)
    for side in ("left", "right"):
        T = 5
        ids = torch.full((2, T), eos)  # pad == eos
        mask = torch.zeros((2, T), dtype=torch.long)
        positions = torch.zeros((2, T), dtype=torch.long)
        last = []
        for b, seq in enumerate(sequences):
            span = slice(0, len(seq)) if side == "right" else slice(T - len(seq), T)
            ids[b, span], mask[b, span], positions[b, span] = torch.tensor(seq), 1, torch.arange(len(seq))
            last.append(b * T + span.stop - 1)
        with torch.no_grad():
            scores = scorer(ids, mask, positions, torch.tensor(last))
            torch.testing.assert_close(scores, alone, rtol=0, atol=1e-5)
            classifier.config.pad_token_id = eos
            builtin = classifier(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        # transformers takes "the last token that is not pad", i.e. the token before EOS
        assert not torch.allclose(builtin, alone, atol=1e-3)
