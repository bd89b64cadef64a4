"""Starting preftune in one process, or in several with `accelerate launch`, for the distributed tests.

Through `sys.executable -m preftune.cli` and `sys.executable -m accelerate.commands.launch`: the tests run
wherever pytest runs, never skipped for want of a script on PATH."""

import os
import socket
import subprocess
import sys

ENV = {**os.environ, "PREFTUNE_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}


def free_port() -> list[str]:
    """A free port for the processes to meet on: a fixed default (29500) can still be held by the
    previous test's processes, and the launch then hangs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(probe.getsockname()[1])]


def one_process(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "preftune.cli", *args], check=True, env=ENV, timeout=300)


def launch(flags: list[str], args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch FLAGS -m preftune.cli ARGS`, its output captured (check its returncode)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *flags, *free_port(), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "preftune.cli", *args]  # fmt: skip
    return subprocess.run(command, env=ENV, timeout=300, capture_output=True, text=True)
