"""Named fault-injection points for recovery tests (a no-op unless a test arms one)."""

from __future__ import annotations

_armed: dict[str, type[BaseException]] = {}


class SimulatedCrash(BaseException):
    """Raised at an armed point: the worker "dies" there (BaseException, so nothing swallows it)."""


def arm(point: str, exc: type[BaseException] = SimulatedCrash) -> None:
    _armed[point] = exc


def disarm_all() -> None:
    _armed.clear()


def fault_point(name: str) -> None:
    exc = _armed.pop(name, None)
    if exc is not None:
        raise exc(name)
