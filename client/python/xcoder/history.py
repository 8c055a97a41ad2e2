"""The stats history (README "History", PROTOCOL.md 2.4): every stats event the
daemon publishes is also one JSON line of STATE_DIR/history.jsonl, rotated to
history.jsonl.1 at history_max_bytes. Read it over the control socket with
Client.history(n), or straight from the files with read_history(path)."""

import json
import os
import warnings

FILE = "history.jsonl"
OLD = "history.jsonl.1"


def parse_lines(lines, where="history"):
    """JSON text lines -> list of dicts (undefined values are None). A line
    that is not JSON (torn by a full disk) is skipped with a warning naming it,
    never silently."""
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            warnings.warn("%s line %d skipped: not JSON (%s)" % (where, i + 1, e))
    return out


def read_history(path, n=None):
    """The stats history from files, oldest first, as a list of dicts.

    path: the daemon's state_dir (history.jsonl.1 then history.jsonl are read)
    or one history file. n: only the newest n events (None = all). A torn last
    line (the daemon was writing it) is left out; a missing file is an empty
    history; any other line that is not JSON is skipped with a warning naming
    the file and line."""
    if os.path.isdir(path):
        files = [os.path.join(path, OLD), os.path.join(path, FILE)]
    else:
        files = [path]
    events = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")
        if lines and lines[-1]:
            lines = lines[:-1]  # no newline yet: being written
        events.extend(parse_lines(lines, f))
    return events if n is None else events[-int(n):] if n > 0 else []
