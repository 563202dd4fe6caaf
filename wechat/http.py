"""The one HTTP session every WeChat client shares, and its rule: no call inside a transaction.

A call to WeChat can take seconds (or time out after many); holding a database
transaction open across it would hold row locks (and SQLite's write lock) that
long. The application hands the session a ``transaction_open`` check; a call
made while it answers True is refused before anything is sent.

No call on it follows a redirect: WeChat's APIs answer where they were asked, and a
redirect followed carried the call (an access_token in its query, a red packet's
signed body over the merchant certificate) to whatever host the answer named. The
3xx answer itself reaches the client, which takes it as an answer it cannot use.
"""

from __future__ import annotations

from collections.abc import Callable

import requests


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
        return super().request(method, url, *args, **kwargs)
