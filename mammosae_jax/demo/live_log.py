"""A stage's output, written whole to its log and shown live on the terminal.

Progress bars (tqdm) redraw with a carriage return; in the log every redraw becomes its own line,
so `logs/<stage>.log` holds the rate and ETA history. On the terminal a redraw is shown at most
every `interval` seconds (on one line that is rewritten when the terminal is a TTY); ordinary
lines are shown as they come, prefixed with the stage's name.
"""
from __future__ import annotations

import io
import sys
import time
from typing import TextIO


class LiveLog(io.TextIOBase):
    """A text stream: everything to `log`; lines and throttled progress redraws to `terminal`."""

    def __init__(self, log: TextIO, name: str, terminal: TextIO | None = None, interval: float = 2.0):
        self.log, self.name, self.interval = log, name, interval
        self.terminal = terminal if terminal is not None else sys.__stdout__
        self.tty = bool(getattr(self.terminal, "isatty", lambda: False)())
        self._pending, self._shown_at, self._redraw_open = "", float("-inf"), False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # producers draw log-friendly bars (tqdm checks this)
        return False

    def write(self, text: str) -> int:
        self._pending += text
        while True:
            cut = min((i for i in (self._pending.find("\r"), self._pending.find("\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            segment, end, self._pending = self._pending[:cut], self._pending[cut], self._pending[cut + 1:]
            if segment.strip():
                self._emit(segment.rstrip(), redraw=end == "\r")
        return len(text)

    def _emit(self, line: str, redraw: bool) -> None:
        self.log.write(line + "\n")
        now = time.monotonic()
        if redraw and now - self._shown_at < self.interval:
            return
        self._shown_at = now if redraw else self._shown_at
        shown = f"  [{self.name}] {line}"
        if redraw and self.tty:
            self.terminal.write("\r" + shown[:200].ljust(100))
            self._redraw_open = True
        else:
            self.terminal.write(("\n" if self._redraw_open else "") + shown + "\n")
            self._redraw_open = False
        self.terminal.flush()

    def flush(self) -> None:
        self.log.flush()

    def close_line(self) -> None:
        """Write what is left without a line end, and end an open redraw on the terminal."""
        if self._pending.strip():
            self._emit(self._pending.rstrip(), redraw=False)
        self._pending = ""
        if self._redraw_open:
            self.terminal.write("\n")
            self.terminal.flush()
            self._redraw_open = False
        self.log.flush()
