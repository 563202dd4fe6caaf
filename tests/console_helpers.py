"""Flask-test-client helpers for the console: sign in with an operator's token, read the CSRF token."""

from __future__ import annotations

import re

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def token_of(headers: dict) -> str:
    return headers["Authorization"].split(" ", 1)[1]


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client, headers: dict) -> str:
    """Sign ``client`` in as the operator of ``headers``; returns a CSRF token for its forms."""
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    answer = client.post("/console/sign-in", data={"token": token_of(headers), "csrf_token": csrf})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return csrf_of(client.get("/console/", follow_redirects=True).get_data(as_text=True))


def post(client, path: str, data: dict, csrf: str, **kwargs):
    return client.post(path, data={**data, "csrf_token": csrf}, **kwargs)
