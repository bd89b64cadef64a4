"""`preftune import-gguf` input checks and the GGUF refusal of --model (no model is loaded here)."""

from __future__ import annotations

import importlib.util

import pytest

from preftune.cli import main
from preftune.data import load_rows, parse_pairs, parse_prompts
from preftune.data.dialogues import NotADialogue, hh_to_messages
from preftune.models import gguf as gguf_module
from preftune.models.gguf import ImportGGUFConfig, find_gguf, import_gguf
from preftune.models.loading import check_model_path


def _fake_gguf(path, magic=b"GGUF"):
    path.write_bytes(magic + b"\x03\x00\x00\x00" + bytes(64))
    return path


def test_find_gguf_takes_a_file_a_folder_or_a_package(tmp_path, monkeypatch):
    file = _fake_gguf(tmp_path / "m.Q4.gguf")
    assert find_gguf(str(file)) == file
    assert find_gguf(str(tmp_path)) == file
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package is never needed')\n")
    _fake_gguf(package / "weights.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert find_gguf("fake_gguf_pkg") == package / "weights.gguf"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: _fake_gguf(d / "x.gguf", magic=b"PK\x03\x04"), "is not a GGUF file (it starts with b'PK"),
        (
            lambda d: (_fake_gguf(d / "a.gguf"), _fake_gguf(d / "b.gguf")) and d,
            "exactly one .gguf file, found a.gguf, b.gguf",
        ),
        (lambda d: d / "missing.gguf", "no such file or folder"),
        (lambda d: "no_such_package_xyz", "neither a file, a folder nor an installed Python package"),
    ],
    ids=["not-gguf", "two-files", "missing-file", "unknown-package"],
)
def test_bad_sources_are_one_clear_error(tmp_path, setup, message):
    source = setup(tmp_path)
    with pytest.raises(ValueError) as error:
        find_gguf(str(source))
    assert message in str(error.value)


def test_a_missing_gguf_package_is_named_with_its_install_command(tmp_path, monkeypatch):
    file = _fake_gguf(tmp_path / "m.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        gguf_module.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name)
    )
    with pytest.raises(ValueError, match="needs the gguf package.*pip install gguf"):
        import_gguf(ImportGGUFConfig(gguf=str(file), out=str(tmp_path / "out")))


def test_an_existing_output_folder_is_refused(tmp_path):
    file = _fake_gguf(tmp_path / "m.gguf")
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists.*--overwrite true"):
        import_gguf(ImportGGUFConfig(gguf=str(file), out=str(tmp_path / "out")))


def test_the_cli_reports_a_bad_source_in_one_line(tmp_path, capsys):
    bad = _fake_gguf(tmp_path / "x.gguf", magic=b"\x00\x00\x00\x00")
    assert main(["import-gguf", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not a GGUF file" in err and "Traceback" not in err


def test_model_flags_refuse_a_gguf_file_and_name_the_import_command(tmp_path):
    file = _fake_gguf(tmp_path / "SmolLM2.gguf")
    with pytest.raises(
        ValueError, match=r"is a GGUF checkpoint.*preftune import-gguf .*SmolLM2.gguf --out models/NAME"
    ):
        check_model_path(str(file))
    with pytest.raises(ValueError, match="is a GGUF checkpoint"):
        check_model_path(str(tmp_path), "--ref_model")  # a folder holding only a .gguf


# ------------------------------------------------------------------ HH transcripts as messages


def test_hh_transcripts_become_alternating_messages():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant: Start with flour.\n\nMix it."
    assert hh_to_messages(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Start with flour.\n\nMix it."},
    ]
    assert hh_to_messages("Human: a\n\nAssistant:")[-1] == {"role": "assistant", "content": ""}
    with pytest.raises(NotADialogue, match='no "Human:"'):
        hh_to_messages("just text")
    with pytest.raises(NotADialogue, match="text before the first turn marker"):
        hh_to_messages("preamble\n\nHuman: a\n\nAssistant: b")


def _table(tmp_path, rows):
    import json

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_rows(str(path))


def test_dialogue_format_hh_gives_conversational_pairs_and_prompts(tmp_path):
    shared = "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant:"
    rows = [
        {"chosen": shared + " good answer", "rejected": shared + " bad answer"},
        {"prompt": "\n\nHuman: q3\n\nAssistant:", "chosen": " yes", "rejected": " no"},
    ]
    pairs = parse_pairs(_table(tmp_path, rows), dialogue_format="hh").examples
    assert pairs[0].prompt == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}
    ]  # fmt: skip
    assert pairs[0].chosen == [{"role": "assistant", "content": "good answer"}]
    assert pairs[1].prompt == [{"role": "user", "content": "q3"}]  # the empty generation turn is dropped
    assert pairs[1].rejected == [{"role": "assistant", "content": "no"}]
    prompts = parse_prompts(_table(tmp_path, rows), dialogue_format="hh").examples
    assert [p.prompt for p in prompts] == [pairs[0].prompt, pairs[1].prompt]
    text_prompts = parse_prompts(
        _table(tmp_path, rows[:1])
    ).examples  # pairwise rows serve as prompts as text too
    assert text_prompts[0].prompt == shared


def test_dialogue_format_hh_names_the_row_that_is_not_a_transcript(tmp_path):
    rows = [{"chosen": "plain text", "rejected": "other text"}]
    with pytest.raises(ValueError, match=r"row 1, field 'chosen': not an HH-RLHF transcript"):
        parse_pairs(_table(tmp_path, rows), dialogue_format="hh")
    assert parse_pairs(_table(tmp_path, rows * 2 + [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}]),
                       skip_invalid=True, dialogue_format="hh").examples[0].row == 3  # fmt: skip
