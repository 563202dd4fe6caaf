"""Fixtures for the wechat package: real RSA/AES keys generated once per session,
a simulator mounted on a bare Flask app, and ``responses`` routing our HTTP
calls into that simulator (any other outbound call fails the test)."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import responses
from flask import Flask
from wechat_testkit import API_BASE, APPID, MCHID, MERCHANT_SERIAL, NOTIFY_URL, PAY_BASE, SIM_HOST  # noqa: F401

from wechat.keys import VerifierKeys
from wechat.pay import PayClient, PayConfig
from wechat.sim.app import create_simulator_blueprint
from wechat.sim.keys import SimulatorKeys, generate_rsa_key
from wechat.sim.state import SimulatorState


def _random_key(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


@pytest.fixture(scope="session")
def merchant_key():
    return generate_rsa_key()


@pytest.fixture(scope="session")
def sim_keys() -> SimulatorKeys:
    return SimulatorKeys()


@pytest.fixture(scope="session")
def apiv3_key() -> str:
    return _random_key(32)


@pytest.fixture(scope="session")
def api_v2_key() -> str:
    return _random_key(32)


@pytest.fixture
def sim_state(merchant_key, sim_keys, apiv3_key, api_v2_key) -> Iterator[SimulatorState]:
    state = SimulatorState(
        mchid=MCHID,
        apiv3_key=apiv3_key,
        merchant_public_key=merchant_key.public_key(),
        api_v2_key=api_v2_key,
        keys=sim_keys,
        notify_initial_delay_s=0.01,
        notify_time_scale=0.0001,
    )
    yield state
    state.dispatcher.stop()


@pytest.fixture
def sim_app(sim_state) -> Flask:
    app = Flask(__name__)
    app.register_blueprint(create_simulator_blueprint(sim_state))
    return app


@pytest.fixture
def verifier_keys(sim_keys) -> VerifierKeys:
    return sim_keys.verifier_keys(public_key=True, certificates=True)


@pytest.fixture
def pay_config(merchant_key, apiv3_key, verifier_keys) -> PayConfig:
    return PayConfig(
        mchid=MCHID,
        appid=APPID,
        private_key=merchant_key,
        cert_serial=MERCHANT_SERIAL,
        apiv3_key=apiv3_key,
        keys=verifier_keys,
        api_base=PAY_BASE,
    )


@pytest.fixture
def pay_client(pay_config) -> PayClient:
    return PayClient(pay_config)


def route_to_app(rsps: responses.RequestsMock, app: Flask, url_prefix: str, app_prefix: str) -> None:
    """Send every request under ``url_prefix`` to ``app`` at ``app_prefix`` (in-process)."""
    client = app.test_client()

    def callback(request):
        parts = urlsplit(request.url)
        path = app_prefix + parts.path[len(urlsplit(url_prefix).path) :]
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        resp = client.open(
            path,
            base_url=f"{parts.scheme}://{parts.netloc}",
            method=request.method,
            query_string=parts.query,
            headers=dict(request.headers),
            data=body,
        )
        return resp.status_code, dict(resp.headers), resp.get_data()

    pattern = re.compile(re.escape(url_prefix) + r"(/.*)?$")
    for method in ("GET", "POST"):
        rsps.add_callback(method, pattern, callback=callback)


@pytest.fixture
def sim_http(sim_app) -> Iterator[responses.RequestsMock]:
    """``responses`` with ``http://sim.test/_sim/...`` served by the simulator app."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        route_to_app(rsps, sim_app, f"{SIM_HOST}/_sim", "/_sim")
        yield rsps
