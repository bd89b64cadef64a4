"""How a fault looks to the user of the `preftune` command, checked by the unit and integration tests."""


def one_error_line(err: str) -> str:
    """The CLI's error as the user sees it on stderr: one line starting with 'error:', and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
