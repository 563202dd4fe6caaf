"""Simulated message push: WeChat telling the app what a person did, signed and encrypted as WeChat does.

The simulated person adds a card (``/_sim/card/add``) → ``user_get_card`` to the official account's push
URL; a card redeemed (``/card/code/consume``) → ``user_consume_card``; deleted (``/_sim/card/delete``) →
``user_del_card``; follows or unfollows the official account (buttons on ``/_sim/``) → ``subscribe`` /
``unsubscribe``; answers a subscribe-message popup (``/_sim/mp/subscribe``) → ``subscribe_msg_popup_event``
to the mini-program's push URL (configured for JSON, as a mini-program may be). Every push is built by
``wechat.push.build_push`` (wechatpy's ``encrypt_message``, safe mode, the app's own token and
EncodingAESKey), recorded in the shared store (``pushes``, listed on ``/_sim/``) and POSTed after the
step commits, retried three times on a non-2xx answer as WeChat does. ``/cgi-bin/user/info`` answers a
follower's unionid.

A person is a name: ``sim-openid-<name>`` in the mini-program, ``sim-oa-openid-<name>`` in the official
account, ``sim-union-<name>`` across both (the identity routes' convention).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from wechat.push import PushSettings, build_push
from wechat.sim.delivery import Delivery, NotificationDispatcher, Transport
from wechat.sim.errors import SimError
from wechat.sim.store import Collection

PUSH_RETRY_SCHEDULE_S = (5.0, 5.0, 5.0)  # WeChat: no answer in 5 s → retried 3 times
MP_OPENID, OA_OPENID, UNIONID = "sim-openid-", "sim-oa-openid-", "sim-union-"


@dataclass(frozen=True)
class PushTarget:
    """One push URL as configured in the WeChat admin: where, with which token / key, XML or JSON."""

    url: str
    settings: PushSettings
    account: str  # the ToUserName: the official account's or the mini-program's original id (gh_…)


def name_of(openid: str) -> str:
    for prefix in (OA_OPENID, MP_OPENID):
        if openid.startswith(prefix):
            return openid[len(prefix) :]
    return openid


class PushMixin:
    store: Any
    lock: Any

    def __init__(self, transport: Transport | None = None, time_scale: float = 0.01) -> None:
        self.push_targets: dict[str, PushTarget] = {}
        self.push_dispatcher = NotificationDispatcher(_content_type, transport, 0.05, PUSH_RETRY_SCHEDULE_S, time_scale)
        self._push_seq = itertools.count(1)

    def configure_push(self, targets: dict[str, PushTarget]) -> None:
        self.push_targets = dict(targets)

    @property
    def pushes(self) -> Collection:
        """push id → source, msg_type, event, openid, create_time (what was pushed, for ``/_sim/``)."""
        return self.store.collection("pushes")

    @property
    def followers(self) -> Collection:
        """official-account openid → following, unionid, subscribe_time."""
        return self.store.collection("oa_followers")

    def push(self, source: str, fields: dict[str, Any]) -> Delivery | None:
        """Record one push and POST it once the current step commits; None when that push URL is not set."""
        target = self.push_targets.get(source)
        if target is None:
            return None
        fields = {"ToUserName": target.account, **fields}
        built = build_push(target.settings, fields)
        push_id = f"{source}-{int(time.time() * 1000)}-{next(self._push_seq)}"
        label = fields.get("Event") or fields.get("MsgType")
        with self.lock:
            self.pushes[push_id] = {
                "source": source,
                "msg_type": fields.get("MsgType"),
                "event": fields.get("Event"),
                "openid": fields.get("FromUserName"),
                "create_time": fields.get("CreateTime"),
            }
            query = "&".join(f"{k}={v}" for k, v in built.args.items())
            delivery = Delivery(url=f"{target.url}?{query}", body=built.body, event_type=label, notification_id=push_id)
            self.store.after_commit(lambda: self.push_dispatcher.schedule(delivery))
        return delivery

    # -- what the simulated person does --------------------------------------------------

    def follow(self, name: str, following: bool) -> Delivery | None:
        """The person follows (or unfollows) the official account."""
        openid, now = OA_OPENID + name, int(time.time())
        with self.lock:
            self.followers[openid] = {"following": following, "unionid": UNIONID + name, "subscribe_time": now}
            event = "subscribe" if following else "unsubscribe"
            return self.push("oa", {"FromUserName": openid, "CreateTime": now, "MsgType": "event", "Event": event})

    def subscribe_popup(self, name: str, template_ids: list[str], status: str) -> Delivery | None:
        """The person answered ``wx.requestSubscribeMessage``: WeChat counts the consents (what a send takes)
        and pushes the popup event, one item per template (an object for one)."""
        if status not in ("accept", "reject") or not template_ids:
            raise SimError(200, "47003", "argument invalid: status accept|reject and at least one template")
        self.count_consents(MP_OPENID + name, template_ids, status)
        return self.push_popup(MP_OPENID + name, template_ids, status)

    def push_popup(self, openid: str, template_ids: list[str], status: str) -> Delivery | None:
        """``subscribe_msg_popup_event`` for the mini-program's push URL (None when it is not set)."""
        items = [{"TemplateId": t, "SubscribeStatusString": status, "PopupScene": "0"} for t in template_ids]
        fields = {
            "FromUserName": openid,
            "CreateTime": int(time.time()),
            "MsgType": "event",
            "Event": "subscribe_msg_popup_event",
            "List": items[0] if len(items) == 1 else items,
        }
        return self.push("mp", fields)

    def card_event(self, event: str, code: str, card: dict[str, Any], **extra: Any) -> Delivery | None:
        """A card event about ``code`` (its holder's official-account openid; ``OuterStr`` as added)."""
        fields = {
            "FromUserName": OA_OPENID + name_of(str(card.get("openid", ""))),
            "CreateTime": int(time.time()),
            "MsgType": "event",
            "Event": event,
            "CardId": card.get("card_id", ""),
            "UserCardCode": code,
            **extra,
        }
        if event != "user_del_card":
            fields["OuterStr"] = card.get("outer_str", "")
        return self.push("oa", fields)

    def user_info(self, openid: str) -> dict[str, Any]:
        """``GET /cgi-bin/user/info``: a follower's subscribe state and unionid."""
        if not openid.startswith(OA_OPENID):
            raise SimError(200, "40003", "invalid openid")
        with self.lock:
            record = self.followers.get(openid)
            if record is None:
                return {"subscribe": 0, "openid": openid}
            answer = {"subscribe": 1 if record["following"] else 0, "openid": openid}
            answer |= {"unionid": record["unionid"], "subscribe_time": record["subscribe_time"]}
        return answer


def _content_type(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json" if body.lstrip().startswith(b"{") else "text/xml"}
