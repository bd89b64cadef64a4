"""Tokenization: exact prompt/response boundaries, loss masks, truncation and their errors."""

from __future__ import annotations

import copy

import pytest

from preftune.data import (
    DataError,
    PairExample,
    Parsed,
    PromptExample,
    SFTExample,
    UnpairedExample,
    encode_dataset,
    encode_pair,
    encode_prompt,
    encode_prompt_example,
    encode_prompt_response,
    encode_sft,
)

PROMPT = "what is two plus two?"
RESPONSE = " four, the quick brown fox says"
CHAT_PROMPT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
CHAT_RESPONSE = [{"role": "assistant", "content": "four"}]


def _ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _target_spans(tokenizer, encoded):
    """The decoded text of each run of consecutive target tokens."""
    spans, current = [], []
    for token, is_target in zip(encoded.input_ids, encoded.loss_mask, strict=True):
        if is_target:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


def test_text_boundary_prompt_then_response_then_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    encoded = encode_prompt_response(tok, PROMPT, RESPONSE, max_length=128)
    prompt_ids = _ids(tok, PROMPT, special=True)
    assert prompt_ids[0] == tok.bos_token_id
    P = encoded.num_prompt_tokens
    assert encoded.input_ids[:P] == prompt_ids
    assert encoded.input_ids[P:] == [*_ids(tok, RESPONSE), tok.eos_token_id]
    assert tok.decode(encoded.input_ids[:P], skip_special_tokens=True) == PROMPT
    assert tok.decode(encoded.input_ids[P:-1]) == RESPONSE
    assert encoded.input_ids[-1] == tok.eos_token_id
    assert encoded.loss_mask == [False] * P + [True] * (len(encoded) - P)
    assert encoded.num_truncated == 0 and encoded.num_loss_tokens == len(encoded) - P


def test_response_already_ending_with_eos_gets_no_second_eos(tiny_tokenizer):
    encoded = encode_prompt_response(tiny_tokenizer, PROMPT, RESPONSE + "</s>", max_length=128)
    assert encoded.input_ids[-2:] != [tiny_tokenizer.eos_token_id] * 2
    assert encoded.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_chat_boundary_response_ids_are_what_follows_the_generation_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    encoded = encode_prompt_response(tok, CHAT_PROMPT, CHAT_RESPONSE, max_length=128)
    # Independent path: the template tokenized by transformers itself (a BatchEncoding in transformers 5).
    prompt_ids = tok.apply_chat_template(CHAT_PROMPT, add_generation_prompt=True, tokenize=True)["input_ids"]
    full_ids = tok.apply_chat_template(CHAT_PROMPT + CHAT_RESPONSE, tokenize=True)["input_ids"]
    P = encoded.num_prompt_tokens
    assert encoded.input_ids[:P] == prompt_ids
    assert encoded.input_ids == full_ids
    assert tok.decode(encoded.input_ids[:P]) == tok.apply_chat_template(
        CHAT_PROMPT, add_generation_prompt=True, tokenize=False
    )
    assert tok.decode(encoded.input_ids[P:]) == "four</s>"
    assert encoded.input_ids[-1] == tok.eos_token_id
    assert encoded.loss_mask == [False] * P + [True] * (len(encoded) - P)


def test_left_truncation_keeps_bos_and_the_whole_response(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = " ".join(["the lazy dog jumps over"] * 20)
    full = encode_prompt_response(tok, long_prompt, RESPONSE, max_length=1024)
    R = len(full) - full.num_prompt_tokens
    cut = encode_prompt_response(tok, long_prompt, RESPONSE, max_length=R + 5)
    assert len(cut) == R + 5
    assert cut.input_ids[0] == tok.bos_token_id
    assert cut.input_ids[1:5] == full.input_ids[full.num_prompt_tokens - 4 : full.num_prompt_tokens]
    assert cut.input_ids[5:] == full.input_ids[full.num_prompt_tokens :]
    assert cut.num_prompt_tokens == 5
    assert cut.num_truncated == full.num_prompt_tokens - 5
    assert cut.loss_mask == [False] * 5 + [True] * R


def test_left_truncation_of_a_chat_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    full = encode_prompt_response(tok, CHAT_PROMPT, CHAT_RESPONSE, max_length=1024)
    R = len(full) - full.num_prompt_tokens
    cut = encode_prompt_response(tok, CHAT_PROMPT, CHAT_RESPONSE, max_length=R + 3)
    assert cut.input_ids == [tok.bos_token_id, *full.input_ids[full.num_prompt_tokens - 2 :]]
    assert cut.num_truncated == full.num_prompt_tokens - 3


def test_truncation_error_policy_raises_instead(tiny_tokenizer):
    with pytest.raises(DataError) as info:
        encode_prompt_response(
            tiny_tokenizer, PROMPT, RESPONSE, 8, truncation="error", source="d.jsonl", row=4
        )
    assert str(info.value).startswith("d.jsonl, row 4, field 'prompt': prompt (")
    assert "exceed max_length=8 (truncation='error')" in str(info.value)


def test_response_that_leaves_no_room_for_the_prompt_is_an_error(tiny_tokenizer):
    tok = tiny_tokenizer
    R = len(_ids(tok, RESPONSE)) + 1
    with pytest.raises(DataError) as info:
        encode_prompt_response(
            tok, PROMPT, RESPONSE, max_length=R, source="d.jsonl", row=9, response_field="chosen"
        )
    message = str(info.value)
    assert message.startswith("d.jsonl, row 9, field 'chosen': the response alone has")
    assert f"leaves no room for the prompt under max_length={R}" in message
    assert "Fix: raise max_length or shorten the response" in message
    just_fits = encode_prompt_response(tok, PROMPT, RESPONSE, max_length=R + 1)
    assert just_fits.input_ids[0] == tok.bos_token_id and just_fits.num_prompt_tokens == 1


def test_sft_text_trains_every_token_but_the_first_and_cuts_on_the_right(tiny_tokenizer):
    tok = tiny_tokenizer
    example = SFTExample(None, "hello world the quick brown fox", 3, "text")
    encoded = encode_sft(tok, example, max_length=128)
    assert encoded.input_ids == [*_ids(tok, example.completion, special=True), tok.eos_token_id]
    assert encoded.loss_mask == [False] + [True] * (len(encoded) - 1)
    assert encoded.num_prompt_tokens == 0
    short = encode_sft(tok, example, max_length=4)
    assert short.input_ids == encoded.input_ids[:4] and short.num_truncated == len(encoded) - 4
    with pytest.raises(DataError, match="field 'text': the text has"):
        encode_sft(tok, example, max_length=4, truncation="error")


def test_sft_prompt_completion_masks_the_prompt_unless_asked_not_to(tiny_tokenizer):
    example = SFTExample(PROMPT, RESPONSE, 1, "prompt_completion")
    only = encode_sft(tiny_tokenizer, example, max_length=128)
    P = only.num_prompt_tokens
    assert not any(only.loss_mask[:P]) and all(only.loss_mask[P:])
    everything = encode_sft(tiny_tokenizer, example, max_length=128, completion_only=False)
    assert everything.input_ids == only.input_ids
    assert everything.loss_mask == [False] + [True] * (len(everything) - 1)


def test_sft_messages_train_every_assistant_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "what is two plus two?"},
        {"role": "assistant", "content": "four"},
    ]
    example = SFTExample(messages[:-1], messages[-1:], 2, "messages")
    encoded = encode_sft(tok, example, max_length=256)
    assert encoded.input_ids == tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert _target_spans(tok, encoded) == ["hello world</s>", "four</s>"]
    assert encoded.num_prompt_tokens == len(
        tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    # Conversational prompt + completion: only the completion's assistant turn is a target.
    as_completion = encode_sft(tok, SFTExample(messages[:-1], messages[-1:], 2, "prompt_completion"), 256)
    assert as_completion.input_ids == encoded.input_ids
    assert _target_spans(tok, as_completion) == ["four</s>"]
    # Left truncation drops early turns, keeps BOS and the final reply, and never targets position 0.
    cut = encode_sft(tok, example, max_length=len(encoded) - 6)
    assert cut.input_ids == [tok.bos_token_id, *encoded.input_ids[7:]]
    assert cut.num_truncated == 6 and cut.loss_mask[0] is False
    assert _target_spans(tok, cut)[-1] == "four</s>"


def test_template_that_is_not_prefix_consistent_is_a_clear_error(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    # The generation prompt ends with "\n", but a rendered assistant turn starts "<|assistant|> ".
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' %} {% else %}{{ '\\n' }}{% endif %}"
        "{{ m['content'] }}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
    )
    with pytest.raises(DataError) as info:
        encode_prompt_response(tok, CHAT_PROMPT, CHAT_RESPONSE, 128, source="chat.jsonl", row=5)
    assert str(info.value).startswith(
        "chat.jsonl, row 5, field 'prompt': the chat template is not prefix-consistent"
    )
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        encode_prompt_response(tok, CHAT_PROMPT, CHAT_RESPONSE, 128)


def test_mixed_styles_are_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="must both be text or both be message lists"):
        encode_prompt_response(tiny_tokenizer, PROMPT, CHAT_RESPONSE, 128)


def test_encode_prompt_for_generation(tiny_tokenizer):
    tok = tiny_tokenizer
    text = encode_prompt(tok, PROMPT)
    assert text == _ids(tok, PROMPT, special=True)
    chat = encode_prompt(tok, CHAT_PROMPT)
    assert (
        chat == tok.apply_chat_template(CHAT_PROMPT, add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    assert tok.decode(chat).endswith("<|assistant|>\n")
    assert encode_prompt(tok, PROMPT, max_length=3) == [tok.bos_token_id, *text[-2:]]
    as_example = encode_prompt_example(tok, PROMPT, max_length=3, row=4)
    assert (as_example.input_ids, as_example.num_truncated) == ([tok.bos_token_id, *text[-2:]], len(text) - 3)
    assert not any(as_example.loss_mask) and as_example.row == 4
    with pytest.raises(DataError, match="field 'prompt'.*exceed max_length=3"):
        encode_prompt(tok, PROMPT, max_length=3, truncation="error")


def test_encode_pair_cuts_the_shared_prompt_once(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = " ".join(["the lazy dog jumps over"] * 10)
    pair = PairExample(long_prompt, " four", RESPONSE, 1.0, None, {"annotator": "a"}, 6)
    encoded = encode_pair(tok, pair, max_length=24)
    P = encoded.chosen.num_prompt_tokens
    assert encoded.chosen.input_ids[:P] == encoded.rejected.input_ids[:P]
    assert P == encoded.rejected.num_prompt_tokens
    assert len(encoded.rejected) == 24 and len(encoded.chosen) < 24  # the longer response sets the cut
    assert tok.decode(encoded.rejected.input_ids[P:]) == RESPONSE + "</s>"
    assert (encoded.margin, encoded.meta, encoded.num_truncated) == (
        1.0,
        {"annotator": "a"},
        encoded.chosen.num_truncated,
    )
    assert encoded.num_truncated > 0


def test_encode_dataset_reports_truncation_and_skips(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = " ".join(["the lazy dog jumps over"] * 10)
    long_response = " " + " ".join(["hello world"] * 30)
    examples = [
        UnpairedExample(PROMPT, " four", True, 1),
        UnpairedExample(long_prompt, " four", False, 2),
        UnpairedExample(PROMPT, long_response, True, 3),
    ]
    parsed = Parsed(examples, [], "kto.jsonl", 3)
    with pytest.raises(DataError, match="kto.jsonl, row 3, field 'completion': the response alone"):
        encode_dataset(tok, parsed, max_length=20)
    items, report = encode_dataset(tok, parsed, max_length=20, skip_invalid=True)
    assert [item.row for item in items] == [1, 2]
    assert [item.label for item in items] == [True, False]
    assert (report.num_rows, report.num_examples, report.num_truncated_examples) == (3, 2, 1)
    assert report.num_truncated_tokens == items[1].num_truncated > 0
    assert [(skip.row, skip.field) for skip in report.skipped] == [(3, "completion")]
    assert "2 examples from 3 rows" in report.summary() and "Skipped 1 of 3 rows" in report.summary()
    prompts = encode_dataset(tok, Parsed([PromptExample(PROMPT, 1)], [], "p.jsonl", 1), max_length=20)
    assert prompts.examples[0].input_ids == _ids(tok, PROMPT, special=True)
    assert not any(prompts.examples[0].loss_mask)
