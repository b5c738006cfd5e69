"""Progress bars that also report in batch runs.

:func:`tqdm` is ``tqdm.auto.tqdm`` (a widget in Jupyter, a text bar in a terminal) unless the environment
variable ``REFT_PROGRESS`` is ``lines``: then every bar prints plain lines to stdout instead, which
papermill streams to the terminal (:mod:`reft.reproduce` sets it, so that a long cell shows its runs and
rounds, not only papermill's cell counter; a widget bar in a papermill kernel is seen by no one). A bar
kept after it ends (``leave=True``: the runs of a sweep, the rounds of a run) prints a line per step; a
transient one (``leave=False``: epochs, batches) at most one line every ``REFT_PROGRESS_EVERY`` seconds
(default 30).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm as _tqdm


def lines() -> bool:
    """Whether bars print plain lines (``REFT_PROGRESS=lines``)."""
    return os.environ.get("REFT_PROGRESS") == "lines"


def tqdm(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **kwargs)``, or a :class:`Lines` bar when :func:`lines`."""
    return Lines(iterable, **kwargs) if lines() else _tqdm(iterable, **kwargs)


class Lines:
    """The part of tqdm's interface this package uses, printing ``desc: n/total [elapsed] postfix`` lines."""

    def __init__(
        self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", disable: bool = False,
        leave: bool = True, **_: Any,
    ) -> None:  # fmt: skip
        self.iterable, self.desc, self.disable, self.leave = iterable, desc, disable, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n, self.postfix = 0, ""
        self.every = float(os.environ.get("REFT_PROGRESS_EVERY", "30"))
        self.t0 = self.last = time.monotonic()
        self.printed_n = -1

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.leave or now - self.last >= self.every:
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.leave and self.printed_n != self.n and self.n:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        if self.disable:
            return
        self.last, self.printed_n = now, self.n
        total = f"/{self.total}" if self.total is not None else ""
        postfix = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} [{now - self.t0:.0f} s]{postfix}", file=sys.stdout, flush=True)
