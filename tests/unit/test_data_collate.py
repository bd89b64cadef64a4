"""Batching: padding sides, packing, block-diagonal masks, and packed == unpacked log-probs on a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from preftune.data import (
    EncodedExample,
    SFTExample,
    collate_packed,
    encode_prompt_response,
    encode_sft,
    pack_examples,
    pad_batch,
)
from preftune.models.tiny import build_tiny_model
from preftune.ops.masks import block_causal_mask


def _example(length, row=0, num_prompt=1):
    ids = list(range(10 + row, 10 + row + length))
    return EncodedExample(ids, [False] * num_prompt + [True] * (length - num_prompt), num_prompt, 0, row)


@pytest.fixture(scope="module")
def encoded(tiny_tokenizer):
    tok = tiny_tokenizer
    pairs = [
        ("what is two plus two?", " four"),
        ("hello", " hello world the quick brown fox jumps over a lazy dog"),
        ("the lazy dog", " sure"),
        ("Human: question 3?\n\nAssistant:", " answer 3."),
    ]
    examples = [encode_prompt_response(tok, p, r, 64, row=i + 1) for i, (p, r) in enumerate(pairs)]
    examples.append(encode_sft(tok, SFTExample(None, "sorry what is four", 5, "text"), 64))
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}]
    examples.append(encode_sft(tok, SFTExample(chat[:1], chat[1:], 6, "messages"), 64))
    return examples


def test_block_causal_mask_by_hand():
    segment_ids = torch.tensor([[1, 1, 2, 2, 2, 0]])
    allowed = block_causal_mask(segment_ids)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding sees only padding, so no row is fully masked
        ],
        dtype=torch.bool,
    )
    assert allowed.shape == (1, 1, 6, 6) and allowed.dtype == torch.bool
    assert torch.equal(allowed[0, 0], expected)
    additive = block_causal_mask(segment_ids, dtype=torch.float32)
    assert torch.equal(additive[0, 0] == 0, expected)
    assert torch.all(additive[0, 0][~expected] == torch.finfo(torch.float32).min)
    with pytest.raises(ValueError, match="torch.bool or a floating dtype"):
        block_causal_mask(segment_ids, dtype=torch.long)


def test_pad_batch_left_and_right_hold_the_same_sequences():
    examples = [_example(3, row=1), _example(5, row=2, num_prompt=2)]
    right = pad_batch(examples, pad_token_id=0)
    left = pad_batch(examples, pad_token_id=0, padding_side="left")
    assert right["input_ids"].shape == left["input_ids"].shape == (2, 5)
    assert right["input_ids"].dtype == torch.long and right["loss_mask"].dtype == torch.bool
    assert right["input_ids"][0].tolist() == [11, 12, 13, 0, 0]
    assert left["input_ids"][0].tolist() == [0, 0, 11, 12, 13]
    for key in ("input_ids", "loss_mask", "position_ids"):
        for b, example in enumerate(examples):
            real_right = right[key][b][right["attention_mask"][b].bool()]
            real_left = left[key][b][left["attention_mask"][b].bool()]
            assert torch.equal(real_right, real_left), key
            assert len(real_right) == len(example)
    assert right["position_ids"][1].tolist() == [0, 1, 2, 3, 4]
    assert int(right["num_loss_tokens"]) == int(left["num_loss_tokens"]) == 2 + 3
    assert int(right["num_tokens"]) == int(left["num_tokens"]) == 3 + 5
    assert pad_batch(examples, 0, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)


def test_pad_batch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no examples"):
        pad_batch([], 0)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        pad_batch([_example(3)], None)
    with pytest.raises(ValueError, match="padding_side"):
        pad_batch([_example(3)], 0, padding_side="middle")


def test_pack_examples_first_fit_is_deterministic_and_keeps_order():
    examples = [_example(n, row=i) for i, n in enumerate([6, 5, 3, 4, 2, 7, 1])]
    rows = pack_examples(examples, max_length=10)
    # 6 -> row 0; 5 -> row 1; 3 fills row 0 to 9; 4 fills row 1 to 9; 2 -> row 2; 7 -> row 2; 1 -> row 0
    assert [[example.row for example in row] for row in rows] == [[0, 2, 6], [1, 3], [4, 5]]
    assert all(sum(len(example) for example in row) <= 10 for row in rows)
    assert pack_examples(examples, max_length=10) == rows
    with pytest.raises(ValueError, match="Row 5 has 7 tokens, more than the packing max_length=6"):
        pack_examples(examples, max_length=6)


def test_pack_examples_matches_a_slow_first_fit():
    lengths = [(7 * i) % 13 + 1 for i in range(200)]
    examples = [_example(n, row=i) for i, n in enumerate(lengths)]
    bins: list[list[int]] = []
    for i, n in enumerate(lengths):
        target = next((b for b in bins if sum(lengths[j] for j in b) + n <= 16), None)
        if target is None:
            bins.append([i])
        else:
            target.append(i)
    rows = pack_examples(examples, max_length=16)
    assert [[example.row for example in row] for row in rows] == bins


def test_collate_packed_layout():
    rows = [[_example(3, row=1), _example(2, row=2)], [_example(4, row=3)]]
    batch = collate_packed(rows, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 12, 13], [13, 14, 15, 16, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
    assert batch["loss_mask"].tolist() == [[False, True, True, False, True], [False, True, True, True, False]]
    assert batch["attention_mask"].shape == (2, 1, 5, 5) and batch["attention_mask"].dtype == torch.float32
    assert int(batch["num_loss_tokens"]) == 6 and int(batch["num_tokens"]) == 9
    assert collate_packed(rows, 0, pad_to=8)["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match="pad_to=4 is shorter than the longest packed row"):
        collate_packed(rows, 0, pad_to=4)


def _target_logps(model, batch):
    """Per-token log-probs of the targets, (B, T - 1), zero elsewhere."""
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits  # (B, T, V)
    logps = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)  # (B, T-1)
    return torch.where(batch["loss_mask"][:, 1:], logps, torch.zeros_like(logps))


def _padded_reference(model, examples, pad_token_id, padding_side="right"):
    """Per-example target log-probs from a padded batch: list of (num_targets,) tensors."""
    batch = pad_batch(examples, pad_token_id, padding_side=padding_side)
    logps = _target_logps(model, batch)
    return [logps[b][batch["loss_mask"][b, 1:]] for b in range(len(examples))]


@pytest.mark.parametrize(
    ("attn", "mask_dtype"),
    [("sdpa", torch.float32), ("sdpa", torch.bool), ("eager", torch.float32)],
)
def test_packed_logps_equal_unpacked(tiny_tokenizer, encoded, attn, mask_dtype):
    model = build_tiny_model(tiny_tokenizer, seed=0).eval()
    model.set_attn_implementation(attn)
    reference = _padded_reference(model, encoded, tiny_tokenizer.pad_token_id)
    rows = pack_examples(encoded, max_length=48)
    assert len(rows) < len(encoded)  # something was actually packed together
    batch = collate_packed(rows, tiny_tokenizer.pad_token_id, mask_dtype=mask_dtype)
    logps = _target_logps(model, batch)
    targets = batch["loss_mask"][:, 1:]
    segments = batch["segment_ids"][:, 1:]
    packed = [
        logps[b][targets[b] & (segments[b] == s + 1)] for b, row in enumerate(rows) for s in range(len(row))
    ]
    order = [example.row for row in rows for example in row]
    by_row = dict(zip(order, packed, strict=True))
    for example, expected in zip(encoded, reference, strict=True):
        got = by_row[example.row]
        assert got.shape == expected.shape == (example.num_loss_tokens,)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.sum(), expected.sum(), rtol=0, atol=1e-5)


def test_left_padding_gives_the_same_logps_as_right_padding(tiny_tokenizer, encoded):
    model = build_tiny_model(tiny_tokenizer, seed=0).eval()
    right = _padded_reference(model, encoded, tiny_tokenizer.pad_token_id, "right")
    left = _padded_reference(model, encoded, tiny_tokenizer.pad_token_id, "left")
    for a, b in zip(right, left, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bool_mask_is_silently_wrong_with_eager_attention(tiny_tokenizer, encoded):
    """Why collate_packed defaults to an additive float mask: eager attention *adds* the mask."""
    model = build_tiny_model(tiny_tokenizer, seed=0).eval()
    model.set_attn_implementation("eager")
    rows = pack_examples(encoded, max_length=48)
    additive = _target_logps(model, collate_packed(rows, tiny_tokenizer.pad_token_id))
    boolean = _target_logps(model, collate_packed(rows, tiny_tokenizer.pad_token_id, mask_dtype=torch.bool))
    assert (additive - boolean).abs().max() > 1e-3
