"""How long the registry calls of one piece of work may take in all, and a switch that stops them.

A web request gives its registry calls a few seconds (`time_budget(10, ...)`); a promotion gives its copy an overall
deadline and a stop switch the heartbeat flips when someone cancels. The transport reads the budget of the current
context: every request's timeouts are cut to what is left, every retry pause is cut short when the switch flips,
and the copy engine checks it between blobs and between chunks. Threads of the copy engine run in a copy of the
caller's context, so they share its budget.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from .errors import CopyStopped, DeadlineExceeded

T = TypeVar("T")
_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("registry_budget", default=None)


class Budget:
    """A deadline (monotonic seconds, or None for none yet) and a stop switch; safe to use from many threads.

    `what` names the limit in messages ("the request's 10 s budget", "the copy deadline of 600 s").
    """

    def __init__(self, seconds: float | None = None, *, what: str = "the time allowed") -> None:
        self.what = what
        self.started = time.monotonic()
        self.deadline = None if seconds is None else self.started + seconds
        self._stopped = threading.Event()
        self.stop_reason = ""

    def set_deadline(self, seconds: float, *, what: str) -> None:
        """Start (or restart) the clock: from now, `seconds` in all."""
        self.deadline = time.monotonic() + seconds
        self.what = what

    def set_total(self, seconds: float, *, what: str) -> None:
        """Make the whole work, counted from when the budget was made (not from now), take at most `seconds`."""
        self.deadline = self.started + seconds
        self.what = what

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def stop(self, reason: str) -> None:
        """Ask the work to stop (a cancel): calls in flight end at their next check, pauses end at once."""
        self.stop_reason = reason
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def check(self, doing: str = "") -> None:
        """Raise CopyStopped after stop(), DeadlineExceeded once the deadline has passed."""
        if self._stopped.is_set():
            raise CopyStopped(self.stop_reason or "stopped")
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{doing + ': ' if doing else ''}gave up at {self.what}")

    def cap(self, seconds: float) -> float:
        """`seconds`, or less when the budget has less left (never below a tenth of a second: requests refuses 0)."""
        left = self.remaining()
        return seconds if left is None else max(0.1, min(seconds, left))

    def pause(self, seconds: float, *, doing: str = "") -> None:
        """Sleep before a retry; raise instead when the pause would outlast the budget, or when stop() is called."""
        left = self.remaining()
        if left is not None and seconds >= left:
            raise DeadlineExceeded(f"{doing + ': ' if doing else ''}no time left for another try within {self.what}")
        if self._stopped.wait(seconds):
            raise CopyStopped(self.stop_reason or "stopped")


def current_budget() -> Budget | None:
    return _current.get()


@contextmanager
def time_budget(seconds: float | None = None, *, what: str = "the time allowed") -> Iterator[Budget]:
    """Registry calls made inside (on this thread, and the copy engine's threads) share one Budget."""
    budget = Budget(seconds, what=what)
    with using_budget(budget):
        yield budget


@contextmanager
def using_budget(budget: Budget | None) -> Iterator[Budget | None]:
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def pause(seconds: float, *, doing: str = "") -> None:
    """A retry pause under the current budget (a plain sleep when there is none)."""
    budget = _current.get()
    if budget is None:
        time.sleep(seconds)
    else:
        budget.pause(seconds, doing=doing)


def check(doing: str = "") -> None:
    budget = _current.get()
    if budget is not None:
        budget.check(doing)


def bounded(call: Callable[[], T], *, doing: str, host: str = "") -> T:
    """call() within the current budget's deadline, for calls whose own timeouts we do not control (cloud SDKs:
    boto3 retries, google-auth's 120 s default, azure-identity's chain).

    Without a deadline it is just call(). With one, it runs on a helper thread (in a copy of this context) and
    DeadlineExceeded is raised once the deadline passes; the helper finishes in the background and its answer is
    dropped. Its exceptions are raised here.
    """
    budget = _current.get()
    left = budget.remaining() if budget is not None else None
    if left is None:
        return call()
    budget.check(doing)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    context = contextvars.copy_context()
    helper = threading.Thread(target=context.run, args=(run,), daemon=True, name="bounded-call")
    helper.start()
    helper.join(max(0.0, left))
    if helper.is_alive():
        raise DeadlineExceeded(f"{host or 'the cloud API'} did not answer {doing} within {budget.what}", host=host)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
