"""preftune.errors: which errors become one line (what, where, fix) and which keep their traceback."""

import errno

import pytest
from safetensors import SafetensorError

from preftune.errors import UserFault, file_system_fault, user_message
from preftune.judges import JudgeRequestError


def test_input_errors_keep_their_message():
    assert user_message(ValueError("--beta must be > 0, got 0.")) == "--beta must be > 0, got 0."
    assert user_message(FileNotFoundError("Config file x.yaml does not exist.")) == (
        "Config file x.yaml does not exist."
    )


def test_a_user_fault_and_a_judge_error_are_one_line():
    assert user_message(UserFault("Could not write\n  step-4:\tfull.")) == "Could not write step-4: full."
    reply = "<html>\n<body>Not Found</body>\n</html>"
    error = JudgeRequestError(f"POST http://h/v1/chat/completions returned HTTP 404 (not retried): {reply}")
    message = user_message(error)
    assert message is not None and "\n" not in message and "HTTP 404" in message


def test_bugs_keep_their_traceback():
    assert user_message(RuntimeError("shape mismatch")) is None
    assert user_message(KeyError("x")) is None
    assert user_message(OSError("transformers: no errno")) is None


def test_a_full_disk_names_the_file_and_the_output_dir():
    error = OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")
    message = user_message(error, "--output_dir", "/runs/a")
    assert message == (
        "Could not write /runs/a/metrics.jsonl: the disk is full (No space left on device). Free space on "
        "that disk, or choose an --output_dir on another disk (it is /runs/a)."
    )


@pytest.mark.parametrize("number", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("path", ["/ro/run", "/ro/run/config.yaml", "/ro"])
def test_an_unwritable_output_dir_says_to_choose_another(number, path):
    message = user_message(OSError(number, "nope", path), "--output_dir", "/ro/run")
    assert message is not None and message.startswith(f"Could not write {path}: ")
    assert "--output_dir /ro/run must be a folder you can write to: choose another --output_dir" in message


def test_an_unreadable_input_is_not_blamed_on_the_output_dir():
    message = user_message(
        OSError(errno.EACCES, "Permission denied", "/data/pairs.jsonl"), "--output_dir", "o"
    )
    assert message == (
        "Could not use /data/pairs.jsonl: permission denied (Permission denied). Check the path, or fix its "
        "permissions or its mount."
    )


def test_os_errors_quoted_or_wrapped_by_other_libraries_are_found():
    rust = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert file_system_fault(rust) == file_system_fault(Exception("No space left on device (os error 28)"))
    fault = file_system_fault(rust)
    assert fault is not None and fault.no_room and fault.path is None
    # torch.save into an open file: a RuntimeError raised while the write's OSError was handled
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    fault = file_system_fault(wrapped)
    assert fault is not None and fault.no_room and "quota" in fault.words
    assert "Free space" in (user_message(wrapped) or "")


def test_a_damaged_safetensors_file_read_somewhere_unnamed_still_gets_one_line():
    message = user_message(SafetensorError("Error while deserializing header: incomplete metadata"))
    assert message is not None and "damaged" in message and "re-download" in message
