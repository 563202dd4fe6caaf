"""The simulator's WeChat-style error answer."""

from __future__ import annotations


class SimError(Exception):
    """A WeChat-style error answer ``{"code","message"}`` with an HTTP status.

    For the v2 XML and the mini-program APIs ``code`` is the err_code / errcode.
    """

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message or code
