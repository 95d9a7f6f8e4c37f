"""Drives `chainql shell` on a pseudo-terminal, as a person at a terminal would, and prints what
the terminal showed (escape sequences removed). Used by the test
`on_a_terminal_tab_completes_and_ctrl_c_cancels_the_statement_not_the_shell`.

    python3 shell_session.py CHAINQL_BINARY DATA_DIR

Each step types keys, then waits (at most a minute) for text on the screen; a step that times
out ends the session with exit status 1 and the screen so far.
"""

import os
import pty
import re
import select
import sys
import time

binary, data_dir = sys.argv[1], sys.argv[2]
pid, terminal = pty.fork()
if pid == 0:
    os.environ["TERM"] = "xterm"
    os.execv(binary, [binary, "shell", "--data-dir", data_dir])

screen = b""


def plain() -> str:
    return re.sub(r"\x1b\[[0-9;?]*[@-~]", "", screen.decode(errors="replace"))


def read_for(seconds: float) -> None:
    global screen
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([terminal], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen += chunk
            # Answer a cursor-position request as a terminal would.
            for _ in range(chunk.count(b"\x1b[6n")):
                os.write(terminal, b"\x1b[1;1R")


def wait_for(text: str, after: str = "") -> None:
    """Waits until `text` is on the screen after the last `after`."""
    deadline = time.time() + 60
    while time.time() < deadline:
        shown = plain()
        start = shown.rfind(after) if after else 0
        if start >= 0 and text in shown[start:]:
            return
        read_for(0.05)
    print(plain())
    sys.exit(f"timed out waiting for {text!r}")


def keys(text: str) -> None:
    os.write(terminal, text.encode())


wait_for("chainql=> ")
keys("SELECT count(*) AS n FROM chain.bl\t;\r")
wait_for("chainql=> ", after="(1 row)")
keys("SELECT count(*) FROM generate_series(1, 1000000000000) a;\r")
# The editor ends the line when it hands the statement over; from then on Ctrl-C is a signal.
wait_for("a;\r\n")
read_for(0.3)
keys("\x03")
wait_for("chainql=> ", after="canceling statement")
keys("SELECT 'dropped")
wait_for("SELECT 'dropped")
keys("\x03")
wait_for("chainql=> ", after="SELECT 'dropped")
keys("SELECT 'alive' AS s;\r")
wait_for("chainql=> ", after=" alive")
keys("\\q\r")
read_for(1)
_, status = os.waitpid(pid, 0)
print(plain())
sys.exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 2)
