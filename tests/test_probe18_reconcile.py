"""Probes of reconciliation against WeChat's bills and of the WeChat client layer under it (round 18)."""

from __future__ import annotations

import threading

from wechat import crypto
from wechat.errors import WeChatSignatureError
from wechat.keys import VerifierKeys
from wechat.notifications import verify_response
from wechat.sim.keys import SimulatorKeys, generate_rsa_key, self_signed_certificate

WAIT_S = 10


def _verify(keys: VerifierKeys, signer: SimulatorKeys, serial: str) -> str:
    """An answer signed with the certificate ``serial``, verified as the pay client verifies one: "ok" or the code."""
    body = b'{"prepay_id":"wx201410272009395522657a690389285100"}'
    try:
        verify_response(signer.sign_headers(body, serial=serial), body, keys)
    except WeChatSignatureError as exc:
        return exc.code
    return "ok"


class Paused(list):
    """The certificates a refresh fetched, handed over only once ``go`` is set (``storing`` says it has begun)."""

    def __init__(self, certs) -> None:
        super().__init__(certs)
        self.storing, self.go = threading.Event(), threading.Event()

    def __iter__(self):
        self.storing.set()
        assert self.go.wait(WAIT_S)
        return super().__iter__()


def test_an_answer_signed_with_a_known_certificate_verifies_while_the_hourly_refresh_stores_the_new_list():
    # given: the platform certificate we hold, and WeChat's list of the hourly refresh (the same certificate and the
    # one it rotates to), being stored while another request's answer is verified
    signer = SimulatorKeys()
    rotated = self_signed_certificate(generate_rsa_key(), "Tenpay.com Root CA (next)")
    fetched = Paused([signer.platform_cert, rotated])
    keys = VerifierKeys(certificates=[signer.platform_cert], refresher=lambda: fetched, clock=lambda: 1000.0)
    refreshing = threading.Thread(target=keys.refresh)
    refreshing.start()
    try:
        assert fetched.storing.wait(WAIT_S)
        # when: an answer signed with the certificate held all along arrives at that moment
        seen = _verify(keys, signer, signer.platform_serial)
    finally:
        fetched.go.set()
        refreshing.join(WAIT_S)
    # then: it verifies (it was refused UNKNOWN_SERIAL: the held certificates were emptied, then filled again)
    assert seen == "ok"
    assert keys.certificate_serials == sorted([signer.platform_serial, crypto.certificate_serial(rotated)])


def test_a_new_serial_arriving_twice_at_once_mid_day_verifies_both_times():
    # given: we hold the old platform certificate of WeChat, which has just rotated to a new one
    old, new = SimulatorKeys(), SimulatorKeys()
    downloading, go, listed = threading.Event(), threading.Event(), [old.platform_cert]

    def refresher():
        downloading.set()
        assert go.wait(WAIT_S)  # GET /v3/certificates takes its time
        return list(listed)

    clock = [1000.0]
    keys = VerifierKeys(refresher=refresher, clock=lambda: clock[0])
    go.set()
    keys.refresh()  # fetched a few minutes ago: only an unknown serial makes the next refresh
    clock[0] += 300
    go.clear()
    downloading.clear()
    listed.append(new.platform_cert)  # WeChat lists the new certificate now, and signs with it
    seen: dict[str, str] = {}

    def answer(who: str) -> None:
        seen[who] = _verify(keys, new, new.platform_serial)

    # when: the first answer signed with the new certificate starts the refresh, a second arrives while it runs
    first = threading.Thread(target=answer, args=("first",))
    first.start()
    assert downloading.wait(WAIT_S)
    second = threading.Thread(target=answer, args=("second",))
    second.start()
    second.join(0.3)
    go.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    # then: both verify (the second was refused UNKNOWN_SERIAL: a refresh was "just tried", though not done yet)
    assert seen == {"first": "ok", "second": "ok"}
