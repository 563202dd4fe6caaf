"""The local WeChat simulator: a fake of WeChat beside the client, like stripe-mock beside stripe-python.

Owns ``/_sim`` (``app``: ``/_sim/api`` stands in for api.weixin.qq.com, ``/_sim/open`` for
open.weixin.qq.com, ``/_sim/pay`` for api.mch.weixin.qq.com), the simulated account's records
(``state`` with ``pay``, ``payouts``, ``cards``), its keys (``keys``), callback delivery
(``delivery``), the pages a person would see (``pages``) and the mounting (``wiring.install``).

Invariants: it speaks WeChat's real wire formats with its own keys (every answer signed, every
callback encrypted and signed), and verifies the merchant's signatures as WeChat does. Every
process of a deployment (web workers, ``flask jobs run``) sees one WeChat: records and keys
live in a shared ``store`` (the database, or Redis when set). Per process are only the knobs a
test turns (``refund_auto_succeed``, ``key_mode``) and the callbacks a process queued and is
still delivering (README, Known limits).
It is imported only in simulator mode (``app.py``); nothing else in ``wechat`` imports it
(``tests/wechat/test_wechat_simulator.py`` checks both).
"""

from wechat.sim.wiring import install, reset

__all__ = ["install", "reset"]
