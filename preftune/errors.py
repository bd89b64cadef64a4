"""Faults users cause or meet, as one line that says what went wrong, where, and how to fix it.

`preftune.cli.main` prints `user_message(error)` after `error:` and exits with code 2; an error
it returns None for is a bug and keeps its traceback. PREFTUNE_LOG_LEVEL=DEBUG shows the traceback
of every error. What counts as a fault:

- `ValueError` and `FileNotFoundError`: bad input (flags, data, paths), checked where it is read,
  with a complete message (the data layer's errors are of this kind);
- `UserFault`: a fault met at run time whose message was completed where it was raised, with the
  context only that place knows: which checkpoint was being written and which one is intact
  (`engine/loop.py`), which weights file of which model folder is damaged (`models/loading.py`),
  which judge request failed and what is cached (`judges/http.py`);
- a file-system error (an `OSError`, or a safetensors, tokenizers or torch error that quotes or
  wraps one): a full disk, a read-only or forbidden folder, a path that is a file, ... named with
  the path the system gives, and the fix.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

__all__ = ["FileSystemFault", "UserFault", "file_system_fault", "user_message"]


class UserFault(Exception):
    """A fault the user met (a damaged file, a full disk, an unreachable judge) whose message already
    says what went wrong, where, and how to fix it; raised where that context is known."""


FILE_SYSTEM_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "a file or folder of that name already exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}
"""The file-system errors a user meets (errno -> what it means), shown as one line with the fix."""
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
"""How Rust libraries (safetensors, tokenizers) quote the OS error behind a failed read or write."""


@dataclass(frozen=True)
class FileSystemFault:
    number: int
    """The errno."""
    words: str
    """What it means, e.g. 'the disk is full (No space left on device)'."""
    path: str | None
    """The file or folder the system named, if it named one."""

    @property
    def no_room(self) -> bool:
        """The disk (or the user's quota on it) is full: freeing space fixes it."""
        return self.number in _NO_ROOM


def file_system_fault(error: BaseException) -> FileSystemFault | None:
    """The file-system fault behind `error`, if any: `error` itself or an error in its chain of
    causes that is an OSError with an errno, or an error of a Rust library (safetensors, tokenizers)
    quoting one. torch.save writing to an open file raises a RuntimeError whose context is the
    OSError of the failed write."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        number, path = None, None
        if isinstance(current, OSError) and current.errno is not None:
            number, path = current.errno, current.filename
        elif match := _RUST_OS_ERROR.search(str(current)):  # safetensors' and tokenizers' Rust I/O errors
            number = int(match.group(1))
        if number is not None:
            meaning = FILE_SYSTEM_ERRORS.get(number, "the file system refused")
            words = f"{meaning} ({os.strerror(number)})"
            return FileSystemFault(number, words, None if path is None else str(path))
        current = current.__cause__ or current.__context__
    return None


def user_message(error: BaseException, output_flag: str = "--output_dir", output_dir: str = "") -> str | None:
    """One line for a fault users cause or meet; None for anything else (a bug, whose traceback matters).

    `output_flag` / `output_dir`: the command's output folder, named in the fix when the failed path
    is in it (or is one of its parents)."""
    if isinstance(error, UserFault):
        return _one_line(str(error))
    if isinstance(error, (ValueError, FileNotFoundError)):
        return str(error)
    fault = file_system_fault(error)
    if fault is not None and fault.number in FILE_SYSTEM_ERRORS:
        return _one_line(_file_system_message(fault, output_flag, output_dir))
    if isinstance(error, SafetensorError):  # the places that read weights name the file (models/loading.py)
        return _one_line(
            f"A .safetensors file is damaged or is not a safetensors file (safetensors: {error}); it was "
            "probably cut short by an interrupted copy, download or save. Re-save or re-download it "
            "(PREFTUNE_LOG_LEVEL=DEBUG shows where it was read)."
        )
    return None


def _file_system_message(fault: FileSystemFault, output_flag: str, output_dir: str) -> str:
    where = fault.path if fault.path is not None else "a file (the system did not say which)"
    in_output = bool(output_dir) and fault.path is not None and _related(Path(fault.path), Path(output_dir))
    if fault.no_room:
        elsewhere = f", or choose an {output_flag} on another disk (it is {output_dir})" if output_dir else ""
        return f"Could not write {where}: {fault.words}. Free space on that disk{elsewhere}."
    if in_output:
        return (
            f"Could not write {where}: {fault.words}. {output_flag} {output_dir} must be a folder you can "
            f"write to: choose another {output_flag}, or fix the permissions or the mount."
        )
    return f"Could not use {where}: {fault.words}. Check the path, or fix its permissions or its mount."


def _related(path: Path, output_dir: Path) -> bool:
    """`path` is `output_dir`, inside it, or one of its parents (creating it failed there)."""
    path, output_dir = path.absolute(), output_dir.absolute()
    return path == output_dir or output_dir in path.parents or path in output_dir.parents


def _one_line(text: str) -> str:
    """Whitespace (newlines of a quoted server reply or OS message included) collapsed to single spaces."""
    return " ".join(text.split())
