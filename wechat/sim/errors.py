"""The simulator's WeChat-style error answer."""

from __future__ import annotations


class SimError(Exception):
    """A WeChat-style error answer ``{"code","message"}`` with an HTTP status.

    For the v2 XML and the mini-program APIs ``code`` is the err_code / errcode.
    """

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message or code


# A simulator answer carrying this header was never "received": the in-process transport raises the
# matching ``requests`` error instead ("dropped": connection lost, "late": read timeout). The call was
# carried out all the same, as when WeChat acts and its answer is lost on the way.
LOST_ANSWER_HEADER = "X-Sim-Lost-Answer"
