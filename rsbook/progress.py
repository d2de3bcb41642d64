"""Progress output that suits where it goes: a live bar on a terminal, plain lines in files and pipes.

tqdm redraws its bar with carriage returns; in a log file, a CI log or a notebook those frames pile up
on one line. `track` uses tqdm only when its stream (stderr by default) is a terminal. Otherwise it
prints plain lines, each ending in a newline and none containing a carriage return: one every `every`
items (and at least one every `interval` seconds), and a closing line with the count and the time.
`echo` prints a message in either mode without tearing a live bar.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

__all__ = ["track", "echo", "is_terminal"]

_MAX_EVERY = 100


def is_terminal(stream=None) -> bool:
    """Whether `stream` (default: sys.stderr at call time) is an open terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def echo(message: str, stream=None):
    """Print `message` as one line on `stream` (default: stderr): through tqdm.write on a terminal,
    so that a live bar is redrawn below it, else as a plain flushed line."""
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        tqdm.write(message, file=stream)
    else:
        print(message, file=stream, flush=True)


class Tracker:
    """An iterable over the wrapped items that reports progress as `track` describes."""

    def __init__(self, iterable, desc: str, total, unit: str, disable: bool, every, interval, leave: bool,
                 final: bool, stream, position):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"every must be an integer >= 0 (0: no periodic lines) or None, got {every!r}")
        if interval is not None and not interval > 0:
            raise ValueError(f"interval must be > 0 seconds or None, got {interval!r}")
        if every is None:
            every = _MAX_EVERY if total is None else min(_MAX_EVERY, max(1, math.ceil(total / 10)))
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.every, self.interval, self.final = every, interval, final
        self.stream = sys.stderr if stream is None else stream
        self.disable = disable
        self.postfix: dict = {}
        self._bar = None
        if not disable and is_terminal(self.stream):
            self._bar = tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=self.stream,
                             position=position)

    def set_postfix(self, **values):
        """Values shown after the count (on the live bar, or on the plain lines that follow)."""
        self.postfix = {name: str(value) for name, value in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def _line(self, count: int, started: float):
        done = f"{count}/{self.total}" if self.total is not None else f"{count}"
        extra = "".join(f", {name}={value}" for name, value in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit} in {time.perf_counter() - started:.1f} s{extra}", file=self.stream,
              flush=True)

    def __iter__(self):
        if self._bar is not None:
            yield from self._bar
            return
        if self.disable:
            yield from self.iterable
            return
        started = last = time.perf_counter()
        count = 0
        for item in self.iterable:
            yield item
            count += 1
            now = time.perf_counter()
            if count != self.total and ((self.every and count % self.every == 0)
                                        or (self.interval is not None and now - last >= self.interval)):
                self._line(count, started)
                last = now
        if self.final:
            self._line(count, started)


def track(iterable, desc: str = "", *, total: int | None = None, unit: str = "it", disable: bool = False,
          every: int | None = None, interval: float | None = 60.0, leave: bool = True, final: bool = True,
          stream=None, position: int | None = None) -> Tracker:
    """Iterate over `iterable`, reporting progress on `stream` (default: sys.stderr at call time).

    On a terminal: a tqdm bar (`leave`: keep it once done; `position`: its row, e.g. a process's rank).
    Elsewhere: plain lines `<desc>: <count>/<total> <unit> in <seconds> s[, name=value ...]`, one after
    every `every` items (None: about a tenth of `total`, at most 100; 0: none) or once `interval`
    seconds have passed since the last line (None: never), and a closing line unless `final` is False
    (for a caller that prints its own summary). `disable`: report nothing. `total` defaults to len(iterable).
    """
    return Tracker(iterable, desc, total, unit, disable, every, interval, leave, final, stream, position)
