"""The one HTTP session every WeChat client shares, and its rule: no call inside a transaction.

A call to WeChat can take seconds (or time out after many); holding a database
transaction open across it would hold row locks (and SQLite's write lock) that
long. The application hands the session a ``transaction_open`` check; a call
made while it answers True is refused before anything is sent.

No call on it follows a redirect: WeChat's APIs answer where they were asked, and a
redirect followed carried the call (an access_token in its query, a red packet's
signed body over the merchant certificate) to whatever host the answer named. The
3xx answer itself reaches the client, which takes it as an answer it cannot use.

A call that failed on the network may still have reached WeChat (the connection dropped after the request was
written, or the answer timed out). The pay client then sends it once more to the backup host, and that answer
(a 429, say) alone says nothing of the first: a caller that must know (a coupon's send, ``payouts.coupon_rail``)
watches its call (``watch_calls``) and asks the watch whether any attempt may have reached WeChat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError


class CallInsideTransaction(RuntimeError):
    """A programming error: commit (or roll back) before calling WeChat."""


class WeChatSession(requests.Session):
    def __init__(self, transaction_open: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.transaction_open = transaction_open

    def request(self, method, url, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - requests' own signature
        if self.transaction_open is not None and self.transaction_open():
            raise CallInsideTransaction(f"{method} {url}: a database transaction is open; commit before calling WeChat")
        kwargs["allow_redirects"] = False  # whatever the caller asked: see the module's docstring
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            _note(method, url, exc)
            raise


# -- which failed attempts may have reached WeChat ---------------------------------------------------------------

# Refused before anything was sent: the request could not even be made.
_NEVER_SENT = (
    requests.exceptions.ConnectTimeout,  # no connection within the connect timeout
    requests.exceptions.URLRequired,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
)


def may_have_arrived(exc: BaseException) -> bool:
    """May the request that failed with ``exc`` have reached the server? No only when no connection was ever made
    (refused, a name that does not resolve, a connect timeout) or the request could not be made at all; a
    connection dropped or reset once open, a read timeout, a broken answer, an SSL error or anything else: maybe."""
    if isinstance(exc, _NEVER_SENT):
        return False
    return not _never_connected(exc)


def _never_connected(exc: BaseException, depth: int = 0) -> bool:
    """urllib3's NewConnectionError (refused, DNS) somewhere in what ``exc`` wraps (requests wraps it in
    MaxRetryError, in its args)."""
    if depth > 6 or exc is None:
        return False
    if isinstance(exc, NewConnectionError):
        return True
    inner = [getattr(exc, "reason", None), exc.__cause__, *(a for a in exc.args if isinstance(a, BaseException))]
    return any(isinstance(e, BaseException) and _never_connected(e, depth + 1) for e in inner)


@dataclass(eq=False)  # each watch is itself: a nested one's exit removes that one, never an equal outer one
class Watch:
    """The failed attempts that may have reached WeChat of the calls made on this thread while it is open."""

    uncertain: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, the error's class)

    def reached(self, method: str, path_part: str = "") -> str | None:
        """The error (its class's name) of the first attempt of ``method`` whose path contains ``path_part`` that
        failed in a way WeChat may have it, or None."""
        return next((e for m, path, e in self.uncertain if m == method.upper() and path_part in path), None)


_watching = threading.local()


@contextmanager
def watch_calls() -> Iterator[Watch]:
    """Watch the calls this thread makes on a ``WeChatSession`` (every WeChat client's, ``wechat.setup``) meanwhile:
    the attempts whose failure may have reached WeChat, the main host's before a failover included."""
    watches = _watching.__dict__.setdefault("watches", [])
    watch = Watch()
    watches.append(watch)
    try:
        yield watch
    finally:
        watches[:] = [w for w in watches if w is not watch]


def _note(method: str, url: str, exc: BaseException) -> None:
    watches = getattr(_watching, "watches", None)
    if not watches or not may_have_arrived(exc):
        return
    seen = (str(method).upper(), urlsplit(str(url)).path, type(exc).__name__)
    for watch in watches:
        watch.uncertain.append(seen)
