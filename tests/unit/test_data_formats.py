"""Validation of rows into examples: every error names source, row and field; skips are counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from preftune.data import (
    DataError,
    PairExample,
    RowTable,
    SFTExample,
    Skip,
    detect_format,
    load_rows,
    parse_pairs,
    parse_prompts,
    parse_sft,
    parse_unpaired,
    split_implicit_prompt,
)

SOURCE = "data/pairs.jsonl"
ROW_NUMBER = 7  # rows keep the numbers they came with (a JSONL line number), not their index
HH_PATH = Path(__file__).parents[2].parent / "shared/data/hh-rlhf-harmless/train.jsonl.gz"


def _table(*rows):
    return RowTable(SOURCE, list(rows), [ROW_NUMBER + 2 * i for i in range(len(rows))])


def _user(text):
    return {"role": "user", "content": text}


def _bot(text):
    return {"role": "assistant", "content": text}


def _expect_error(parse, row, field, problem):
    """The row alone raises a DataError naming source, row and field; with skip_invalid it is counted."""
    with pytest.raises(DataError) as info:
        parse(_table(row))
    error = info.value
    location = f"{SOURCE}, row {ROW_NUMBER}" + (f", field {field!r}" if field is not None else "")
    assert str(error).startswith(location + ": "), str(error)
    assert (error.source, error.row, error.field) == (SOURCE, ROW_NUMBER, field)
    assert problem in error.problem, error.problem
    assert ". Fix: " in str(error) and "--skip_invalid" in str(error)
    # Next to a valid row, skip_invalid keeps the valid one and counts the invalid one.
    good = {"prompt": "p", "chosen": " a", "rejected": " b", "completion": " c", "label": True, "text": "t"}
    parsed = parse(_table(good, row), skip_invalid=True)
    assert len(parsed.examples) == 1
    assert parsed.skipped == [Skip(ROW_NUMBER + 2, field, error.problem)]
    assert parsed.num_rows == 2 and "Skipped 1 of 2 rows" in parsed.summary()


PAIR_ERRORS = [
    ({"question": "q", "answer": "a"}, None, "no pairwise format matches the columns ['answer', 'question']"),
    ({"prompt": "p", "chosen": " c"}, "rejected", "missing or null"),
    ({"prompt": "p", "chosen": " c", "rejected": None}, "rejected", "missing or null"),
    (
        {"prompt": "p", "chosen": 3, "rejected": " r"},
        "chosen",
        "expected text (the prompt is text), got int 3",
    ),
    ({"prompt": 1.5, "chosen": " c", "rejected": " r"}, "prompt", "expected text, got float 1.5"),
    (
        {"prompt": [{"content": "x"}], "chosen": [_bot("a")], "rejected": [_bot("b")]},
        "prompt[0].role",
        "missing",
    ),
    (
        {"prompt": [{"role": "user"}], "chosen": [_bot("a")], "rejected": [_bot("b")]},
        "prompt[0].content",
        "missing",
    ),
    (
        {"prompt": [_user("x")], "chosen": [{"role": "robot", "content": "a"}], "rejected": [_bot("b")]},
        "chosen[0].role",
        "unknown role 'robot'",
    ),
    (
        {"prompt": ["hi"], "chosen": [_bot("a")], "rejected": [_bot("b")]},
        "prompt[0]",
        "expected a message object",
    ),
    ({"prompt": [], "chosen": [_bot("a")], "rejected": [_bot("b")]}, "prompt", "expected a non-empty list"),
    (
        {"prompt": [_user("x")], "chosen": "a", "rejected": [_bot("b")]},
        "chosen",
        "expected a list of messages",
    ),
    (
        {"prompt": [_user("x")], "chosen": [_bot("a")], "rejected": [_user("b")]},
        "rejected[0].role",
        "starts with a 'user' turn",
    ),
    ({"prompt": [_user("x")], "chosen": [_bot(" ")], "rejected": [_bot("b")]}, "chosen", "empty response"),
    ({"prompt": "p", "chosen": "   \n", "rejected": " r"}, "chosen", "empty response"),
    ({"prompt": "p", "chosen": " r", "rejected": ""}, "rejected", "empty response"),
    ({"prompt": " \t", "chosen": " c", "rejected": " r"}, "prompt", "empty prompt"),
    ({"prompt": [_user(" ")], "chosen": [_bot("a")], "rejected": [_bot("b")]}, "prompt", "empty prompt"),
    ({"prompt": "p", "chosen": " same", "rejected": " same"}, "rejected", "chosen identical to rejected"),
    (
        {"prompt": "p", "chosen": " c", "rejected": " r", "margin": "high"},
        "margin",
        "expected a number, got str",
    ),
    (
        {"prompt": "p", "chosen": " c", "rejected": " r", "margin": True},
        "margin",
        "expected a number, got bool",
    ),
    ({"prompt": "p", "chosen": " c", "rejected": " r", "margin": math.nan}, "margin", "non-finite value nan"),
    ({"prompt": "p", "chosen": " c", "rejected": " r", "weight": math.inf}, "weight", "non-finite value inf"),
    ({"prompt": "p", "chosen": " c", "rejected": " r", "weight": -0.5}, "weight", "negative weight -0.5"),
    (
        {"prompt": "p", "chosen": " c", "rejected": " r", "shown_first": "left"},
        "shown_first",
        "expected 'chosen' or 'rejected'",
    ),
    ({"prompt": "p", "chosen": " c", "rejected": " r", "order": -1}, "order", "negative order"),
    (
        {"prompt": "p", "chosen": " c", "rejected": " r", "order": "3"},
        "order",
        "expected an integer, got str",
    ),
    (
        {"prompt": "p", "chosen": " c", "rejected": " r", "annotator": 1.5},
        "annotator",
        "expected text or an integer, got float",
    ),
    ({"chosen": "Yes please", "rejected": "No thanks"}, "chosen", "share no prompt"),
    # the field named is the one at fault, not the first column of another format
    ({"prompt": "p", "chosen": " c"}, "rejected", "missing or null"),
    ({"chosen": "Q: hi\n\nAssistant: a"}, "rejected", "missing or null"),
    ({"chosen": None, "rejected": "Q: hi\n\nAssistant: a"}, "chosen", "missing or null"),
    ({"prompt": "p", "chosen": None, "rejected": " r"}, "chosen", "missing or null"),
    (
        {"chosen": 5, "rejected": "Q: hi\n\nAssistant: a"},
        "chosen",
        "expected text or a list of messages, got int 5",
    ),
    ({"chosen": "Q: hi\n\nAssistant: a", "rejected": 7.5}, "rejected", "expected text or a list of messages"),
    ({"prompt": "p", "chosen": 5, "rejected": " r"}, "chosen", "got int 5"),
    ({"chosen": "Q: hi\n\nAssistant:", "rejected": "Q: hi\n\nAssistant: hello"}, "chosen", "empty response"),
    (
        {"chosen": "Q: hi\n\nAssistant: hello", "rejected": "Q: hi\n\nAssistant: hello"},
        "rejected",
        "chosen identical to rejected",
    ),
    (
        {"chosen": [_user("x"), _bot("a")], "rejected": "x a"},
        "rejected",
        "chosen is a list of messages but rejected",
    ),
    ({"chosen": [_user("x"), _bot("a")], "rejected": [_user("y"), _bot("a")]}, "chosen", "share no prompt"),
    ({"chosen": [_user("x"), _bot("a")], "rejected": [_user("x")]}, "rejected", "empty response"),
    (
        {
            "chosen": [_user("x"), _bot("a"), _user("more")],
            "rejected": [_user("x"), _bot("a"), _user("less")],
        },
        "chosen[2].role",
        "starts with a 'user' turn",
    ),
]


@pytest.mark.parametrize(("row", "field", "problem"), PAIR_ERRORS)
def test_pair_errors_name_source_row_and_field(row, field, problem):
    _expect_error(parse_pairs, row, field, problem)


SFT_ERRORS = [
    ({"answer": "x"}, None, "no SFT format matches the columns ['answer']"),
    ({"prompt": "x"}, "completion", "missing or null"),
    ({"text": ""}, "text", "empty text"),
    ({"text": 12}, "text", "expected text, got int 12"),
    ({"prompt": "p", "completion": "  "}, "completion", "empty response"),
    ({"prompt": "p", "completion": [_bot("a")]}, "completion", "expected text (the prompt is text)"),
    ({"messages": "hello"}, "messages", "expected a non-empty list of messages, got str"),
    ({"messages": [_user("x"), _bot("a"), _user("y")]}, "messages[2].role", "ends with a 'user' turn"),
    ({"messages": [_user("x"), _bot(""), _user("y"), _bot("b")]}, "messages[1].content", "empty response"),
    ({"messages": [_user("x"), {"role": "assistant", "content": None}]}, "messages[1].content", "missing"),
]


@pytest.mark.parametrize(("row", "field", "problem"), SFT_ERRORS)
def test_sft_errors_name_source_row_and_field(row, field, problem):
    _expect_error(parse_sft, row, field, problem)


def test_sft_on_pairwise_data_suggests_the_text_field_flag_and_is_not_skippable():
    with pytest.raises(DataError, match="pass --dataset_text_field chosen"):
        parse_sft(_table({"chosen": "x", "rejected": "y"}), skip_invalid=True)


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "p", "completion": " c", "label": "yes"}, "label", "expected true or false, got str"),
        ({"prompt": "p", "completion": " c", "label": 2}, "label", "expected true or false, got int 2"),
        ({"prompt": "p", "completion": " c", "label": 1.0}, "label", "expected true or false, got float"),
        ({"prompt": "p", "completion": " c"}, "label", "missing or null"),
        ({"prompt": "p", "completion": " ", "label": True}, "completion", "empty response"),
    ],
)
def test_unpaired_errors_name_source_row_and_field(row, field, problem):
    _expect_error(parse_unpaired, row, field, problem)


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"text": "x"}, None, "no prompt-only format matches the columns ['text']"),
        ({"prompt": ""}, "prompt", "empty prompt"),
        ({"prompt": {"role": "user"}}, "prompt", "expected text, got dict"),
    ],
)
def test_prompt_errors_name_source_row_and_field(row, field, problem):
    _expect_error(parse_prompts, row, field, problem)


def test_without_skip_invalid_the_first_bad_row_raises_and_nothing_is_dropped():
    rows = [{"text": "a"}, {"text": ""}, {"text": "b"}]
    with pytest.raises(DataError, match=f"row {ROW_NUMBER + 2}, field 'text'"):
        parse_sft(_table(*rows))
    parsed = parse_sft(_table(*rows), skip_invalid=True)
    assert [example.completion for example in parsed.examples] == ["a", "b"]
    assert len(parsed.examples) + len(parsed.skipped) == len(rows)


def test_all_rows_invalid_or_no_rows_is_an_error():
    with pytest.raises(DataError, match=r"every row is invalid\. Skipped 2 of 2 rows"):
        parse_sft(_table({"text": ""}, {"text": " "}), skip_invalid=True)
    with pytest.raises(DataError, match="no rows"):
        parse_pairs(_table())


def test_parse_pairs_keeps_numbers_and_rating_metadata_and_ignores_extra_columns():
    row = {
        "prompt": "p",
        "chosen": " c",
        "rejected": " r",
        "margin": 2,
        "weight": 0.5,
        "annotator": "ann-3",
        "annotator_group": 1,
        "order": 4,
        "shown_first": "rejected",
        "pair_id": 17,
        "source_url": "ignored",
    }
    (example,) = parse_pairs(_table(row)).examples
    assert example == PairExample(
        prompt="p",
        chosen=" c",
        rejected=" r",
        margin=2.0,
        weight=0.5,
        meta={
            "annotator": "ann-3",
            "annotator_group": 1,
            "order": 4,
            "shown_first": "rejected",
            "pair_id": 17,
        },
        row=ROW_NUMBER,
    )
    (bare,) = parse_pairs(_table({"prompt": "p", "chosen": " c", "rejected": " r", "margin": None})).examples
    assert (bare.margin, bare.weight, bare.meta) == (None, None, {})


def test_parse_pairs_conversational_explicit_and_implicit():
    prompt = [{"role": "system", "content": "Be nice."}, _user("hi")]
    explicit = {"prompt": prompt, "chosen": [_bot("hello")], "rejected": [_bot("go away")]}
    implicit = {"chosen": [*prompt, _bot("hello")], "rejected": [*prompt, _bot("go away")]}
    for row in (explicit, implicit):
        (example,) = parse_pairs(_table(row)).examples
        assert (example.prompt, example.chosen, example.rejected) == (
            prompt,
            [_bot("hello")],
            [_bot("go away")],
        )


def test_parse_pairs_drops_null_message_keys_from_parquet_structs():
    row = {
        "prompt": [{"role": "user", "content": "x", "name": None}],
        "chosen": [_bot("a")],
        "rejected": [_bot("b")],
    }
    (example,) = parse_pairs(_table(row)).examples
    assert example.prompt == [_user("x")]


def test_parse_sft_formats():
    rows = [
        {"text": "all of it"},
        {"prompt": "q", "completion": " a", "label": False},  # unpaired data works as prompt-completion SFT
        {"messages": [_user("x"), _bot("a"), _user("y"), _bot("b")]},
        {"messages": [_bot("monologue")]},
        {"prompt": [_user("x")], "completion": [_bot("a")]},
    ]
    examples = parse_sft(_table(*rows)).examples
    assert examples[0] == SFTExample(None, "all of it", ROW_NUMBER, "text")
    assert examples[1] == SFTExample("q", " a", ROW_NUMBER + 2, "prompt_completion")
    assert examples[2] == SFTExample(
        [_user("x"), _bot("a"), _user("y")], [_bot("b")], ROW_NUMBER + 4, "messages"
    )
    assert examples[3] == SFTExample(None, [_bot("monologue")], ROW_NUMBER + 6, "messages")
    assert examples[4] == SFTExample([_user("x")], [_bot("a")], ROW_NUMBER + 8, "prompt_completion")


def test_parse_sft_text_field_uses_any_column():
    rows = [{"chosen": "Human: hi\n\nAssistant: hello", "rejected": "x"}, {"chosen": [_user("x"), _bot("y")]}]
    examples = parse_sft(_table(*rows), text_field="chosen").examples
    assert examples[0] == SFTExample(None, "Human: hi\n\nAssistant: hello", ROW_NUMBER, "text")
    assert examples[1].format == "messages"
    with pytest.raises(DataError, match="field 'answer': missing or null"):
        parse_sft(_table(*rows), text_field="answer")


def test_parse_unpaired_accepts_bools_and_0_1():
    rows = [{"prompt": "p", "completion": " c", "label": value} for value in (True, False, 1, 0)]
    assert [example.label for example in parse_unpaired(_table(*rows)).examples] == [True, False, True, False]


def test_parse_prompts_reads_the_prompt_of_any_row():
    rows = [{"prompt": "p", "chosen": " c", "rejected": " r"}, {"prompt": [_user("x")]}]
    assert [example.prompt for example in parse_prompts(_table(*rows)).examples] == ["p", [_user("x")]]


@pytest.mark.parametrize(
    ("row", "name"),
    [
        ({"prompt": "p", "completion": "c", "label": True}, "unpaired_preference"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"prompt": None, "chosen": "c", "rejected": "r"}, "implicit_preference"),
        ({"messages": [], "text": "t"}, "messages"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"text": "t", "id": 3}, "text"),
        ({"prompt": "p"}, "prompt_only"),
        ({"question": "q"}, None),
    ],
)
def test_detect_format(row, name):
    assert detect_format(row) == name


HH_HEAD = "\n\nHuman: How do I steal a car?\n\nAssistant: Why?\n\nHuman: I want one."


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        # HH-RLHF: the prompt ends with the turn marker, responses start with the space after it
        (
            HH_HEAD + "\n\nAssistant: I'm sorry",
            HH_HEAD + "\n\nAssistant: Sure",
            (HH_HEAD + "\n\nAssistant:", " I'm sorry", " Sure"),
        ),
        # responses that start with the same words are still split at the last assistant turn
        (
            HH_HEAD + "\n\nAssistant: I think so.",
            HH_HEAD + "\n\nAssistant: I think not.",
            (HH_HEAD + "\n\nAssistant:", " I think so.", " I think not."),
        ),
        # one response extends the other: fine when both are non-empty after the turn marker
        (
            HH_HEAD + "\n\nAssistant: Thanks.",
            HH_HEAD + "\n\nAssistant: Thanks. Bye!",
            (HH_HEAD + "\n\nAssistant:", " Thanks.", " Thanks. Bye!"),
        ),
        # plain text: back off to the start of the first differing word and the space before it
        ("The answer is 4", "The answer is 42", ("The answer is", " 4", " 42")),
        ("Hello wonderful world", "Hello wonky world", ("Hello", " wonderful world", " wonky world")),
        ("Say:\n\tyes", "Say:\n\tno", ("Say:", "\n\tyes", "\n\tno")),
    ],
)
def test_split_implicit_prompt(chosen, rejected, expected):
    assert split_implicit_prompt(chosen, rejected) == expected
    prompt, chosen_response, rejected_response = expected
    assert prompt + chosen_response == chosen and prompt + rejected_response == rejected


@pytest.mark.parametrize(
    ("chosen", "rejected", "problem"),
    [
        ("same", "same", "identical"),
        ("Yes", "No", "share no prompt"),
        ("Hello", "Hello world", "share no prompt"),  # a prefix with no word boundary to split at
        (HH_HEAD + "\n\nAssistant: ", HH_HEAD + "\n\nAssistant: Sure", "empty response"),
        ([_user("x"), _bot("a")], [_user("x"), _bot("a"), _user("y"), _bot("b")], "empty response"),
    ],
)
def test_split_implicit_prompt_errors(chosen, rejected, problem):
    with pytest.raises(ValueError, match=problem):
        split_implicit_prompt(chosen, rejected)


def test_split_implicit_prompt_on_messages():
    shared = [_user("x"), _bot("a"), _user("y")]
    assert split_implicit_prompt([*shared, _bot("b")], [*shared, _bot("c")]) == (
        shared,
        [_bot("b")],
        [_bot("c")],
    )


@pytest.mark.skipif(not HH_PATH.exists(), reason=f"HH-RLHF sample not found at {HH_PATH}")
def test_hh_rlhf_implicit_prompts_end_with_the_assistant_turn():
    table = load_rows(str(HH_PATH))
    assert len(table) == 1800
    parsed = parse_pairs(table, skip_invalid=True)
    # Four pairs have an empty chosen reply (the dialogue ends with "Assistant: "): counted, not dropped.
    assert [(skip.row, skip.field) for skip in parsed.skipped] == [
        (87, "chosen"),
        (517, "chosen"),
        (926, "chosen"),
        (1104, "chosen"),
    ]
    assert all("empty response" in skip.problem for skip in parsed.skipped)
    assert len(parsed.examples) + len(parsed.skipped) == 1800
    for example, row in zip(
        parsed.examples, (r for r in range(1, 1801) if r not in (87, 517, 926, 1104)), strict=True
    ):
        assert example.row == row
        assert example.prompt.endswith("\n\nAssistant:"), (row, example.prompt[-60:])
        assert example.chosen.startswith(" ") and example.rejected.startswith(" ")
        assert example.chosen.strip() and example.rejected.strip() and example.chosen != example.rejected
        assert example.prompt + example.chosen == table.rows[row - 1]["chosen"]
        assert example.prompt + example.rejected == table.rows[row - 1]["rejected"]
    with pytest.raises(DataError, match=r"train\.jsonl\.gz, row 87, field 'chosen': empty response"):
        parse_pairs(table)
