"""The demo's HTTP client, its waiting, and the two ``flask`` commands it runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.25
T = TypeVar("T")


class DemoFailure(Exception):
    """A step did not go as the story says; the message says which and why (``code``: the server's ``error``)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    print(text, flush=True)


def yuan(fen: int) -> str:
    """4000 → '40.00' (fen are integers all the way; no float)."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


class Client:
    """One base URL; every call names the step it belongs to, for the failure message.

    Each call opens its own connection, as the phones, the mini-program and WeChat would: behind
    gunicorn, consecutive calls then land on any worker, not on the one a kept-alive connection
    happens to hold.
    """

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        # Each person's phone on a network of its own (``make run`` trusts one proxy, so X-Forwarded-For is their
        # address): from 127.0.0.1 all, the risk engine saw every run's people on one network and from the third
        # run on held their rebates for review.
        self.addresses: dict[str, str] = {}

    def call(
        self,
        step: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        key: str | None = None,
        accept_json: bool = False,
        address: str | None = None,
    ) -> Any:
        url = path if path.startswith("http") else self.base_url + path
        headers = {"Connection": "close", **({"Accept": "application/json"} if accept_json else {})}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        address = address or self.addresses.get(token or "")
        if address:
            headers["X-Forwarded-For"] = address
        if key:
            headers["Idempotency-Key"] = key
        try:
            response = requests.request(method, url, json=json, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.ConnectionError:
            raise DemoFailure(
                f"{step}: cannot reach {self.base_url} — is `make run` serving there? (start it in another terminal)"
            ) from None
        except requests.Timeout:
            raise DemoFailure(f"{step}: {method} {path} had no answer within {REQUEST_TIMEOUT_S} s") from None
        if response.status_code >= 400:
            raise DemoFailure(
                f"{step}: {method} {path} answered {response.status_code} {_explain(response)}", _error(response)
            )
        return response.json() if response.content else None


def _explain(response: requests.Response) -> str:
    """The server's own words: ``error`` and ``message`` of its JSON, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return repr(response.text[:200])
    if not isinstance(body, dict):
        return repr(body)
    text = f"{body.get('error', '?')}: {body.get('message', body)}"
    if response.headers.get("Retry-After"):
        text += f" (retry after {response.headers['Retry-After']} s)"
    return text


def _error(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def wait_for(what: str, fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float) -> tuple[T, float]:
    """Poll ``fetch`` until ``done`` holds; the value and the seconds it took, or a failure naming the last value."""
    started = time.monotonic()
    while True:
        value = fetch()
        if done(value):
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise DemoFailure(f"waited {timeout_s:.0f} s for {what}; last seen: {value!r}")
        time.sleep(POLL_INTERVAL_S)


def flask_command(*args: str) -> str:
    """Run ``flask <args>`` in this environment (the server's settings) and return its output."""
    env = {**os.environ, "FLASK_APP": "app"}
    env.setdefault("WECHAT_MODE", "simulator")  # the demo only ever talks to a simulator run
    done = subprocess.run(  # noqa: S603 - our own interpreter and the flask command
        [sys.executable, "-m", "flask", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("{"))  # not the JSON logs
    if done.returncode != 0:
        errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("{"))
        raise DemoFailure(f"`flask {' '.join(args)}` failed (exit {done.returncode}):\n{output}\n{errors}".rstrip())
    return output


def operator_token() -> str:
    """A one-day admin token from ``flask seed-demo`` (idempotent: it adds nothing but the token)."""
    output = flask_command("seed-demo")
    found = re.search(r"admin token \(1 day\): (\S+)", output)
    if not found:
        raise DemoFailure(f"`flask seed-demo` printed no admin token:\n{output}")
    return found.group(1)
