"""The demo's challenge among friends: Alice and Bob play a one-day step challenge started in a WeCom group.

Both bind their WeCom accounts in a private chat with the robot (a one-time code confirmed in the
mini-program); Alice starts the challenge in the group ("@挑战机器人 发起步数挑战 1天 每人2元"), Bob joins;
the demo's clock (simulator mode only) moves the challenge two days back, so its one day is yesterday; both
phones upload WeRun data (encrypted by the simulator under each person's session key, decrypted by the app);
the settle job settles it: Bob walked more, Alice's 2-yuan stake becomes a red packet Alice issues to Bob;
Bob spends it on a tea, and Alice, the packet's issuer, earns her share back.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING

from demo.client import DemoFailure, say, wait_for, yuan

if TYPE_CHECKING:
    from demo.__main__ import Walkthrough

BEIJING = timezone(timedelta(hours=8))
STAKE = "2元"
STEPS = {"alice": 6_802, "bob": 12_345}


class ChallengeStory:
    def __init__(self, walk: Walkthrough, admin_token: str) -> None:
        self.walk, self.api, self.run = walk, walk.api, walk.run
        self.admin_token = admin_token
        self.group = f"friends-{self.run}"

    def play(self, alice: str, bob: str, noodles: dict, tea: dict, bob_code: str) -> None:
        self.walk.newcomer_packet_order("Bob", bob, bob_code, noodles, step="8")
        for name, token in (("alice", alice), ("bob", bob)):
            self.bind(name, token)
        say(
            "9. Alice and Bob each sent the challenge robot 「绑定」 in a private WeCom chat and confirmed the "
            "one-time code in the mini-program (POST /api/v1/me/chat-bindings): the robot knows who they are."
        )
        started = self.robot("alice", f"发起步数挑战 1天 每人{STAKE}", group=True)
        found = re.search(r"#(\d+)", started)
        if not found:
            raise DemoFailure(f"the robot did not start a challenge: {started!r}")
        challenge_id = int(found.group(1))
        joined = self.robot("bob", f"加入 {challenge_id}", group=True)
        wallets = {n: self.wallet(t) for n, t in (("alice", alice), ("bob", bob))}
        say(
            f"10. In the group {self.group}: Alice → 「@挑战机器人 发起步数挑战 1天 每人{STAKE}」, the robot: "
            f"{first_line(started)}; Bob → 「加入 {challenge_id}」, the robot: {first_line(joined)}. Their stakes are "
            f"reserved from their balances: Alice {yuan(wallets['alice'])} and Bob {yuan(wallets['bob'])} left."
        )
        moved = self.api.call(
            "move the challenge two days back (the demo's clock, simulator mode only)",
            "POST",
            f"/admin/api/sim/challenges/{challenge_id}/days-ago",
            token=self.admin_token,
            json={"days": 2},
        )
        day = date.fromisoformat(moved["start_day"])
        for name, token in (("alice", alice), ("bob", bob)):
            self.upload_steps(name, token, day)
        board = self.robot("alice", f"排行榜 {challenge_id}", group=True)
        say(
            f"11. The demo's clock moved the challenge's day to {day} (yesterday). Both phones uploaded WeRun data "
            f"(wx.getWeRunData, encrypted by the simulator under each person's session key, decrypted by the app): "
            f"Alice {STEPS['alice']:,} steps, Bob {STEPS['bob']:,}. 「排行榜」: {' / '.join(board.splitlines()[1:3])}"
        )
        settled, waited = wait_for(
            "the settle job (make run: every 5 s) to settle the challenge",
            lambda: self.api.call("read the challenge", "GET", f"/api/v1/challenges/{challenge_id}", token=alice),
            lambda c: c["status"] == "settled",
            self.walk.timeout_s,
        )
        packet = self.challenge_packet(bob)
        say(
            f"12. {waited:.1f} s later the settle job settled it: Bob won, and Alice's stake became a red packet "
            f"Alice issued to Bob: {yuan(packet['amount_fen'])} off (packet #{packet['id']}, issuer "
            f"{packet['issuer_type']}); Alice's balance {yuan(self.wallet(alice))}, Bob's {yuan(self.wallet(bob))}."
        )
        order = self.walk.order("Bob orders a tea with Alice's packet", bob, tea, packet["id"])
        paid, _ = self.walk.pay("Bob pays for the tea", bob, order)
        hers = self.api.call("read Alice's rebates", "GET", "/api/v1/me/rebates", token=alice)["items"]
        on_order = {"id": order["id"], "rebates": [r for r in hers if r["order_id"] == order["id"]]}
        [share] = self.walk.awarded(on_order, "issuer", "Alice's share back as the packet's issuer")
        say(
            f"13. Bob paid {yuan(paid['paid_fen'])} for a {yuan(paid['total_fen'])} tea with it; Alice, the packet's "
            f"issuer, earns {yuan(share['amount_fen'])} back as {share['form']} ({'; '.join(share['reasons'])})."
        )

    # -- the pieces ------------------------------------------------------------------------------------

    def person(self, name: str) -> str:
        return f"{name}-{self.run}"  # the simulator's person behind the login code code-<name>-<run>

    def robot(self, name: str, content: str, *, group: bool = False) -> str:
        body = {"name": self.person(name), "content": content, "group": self.group if group else None}
        said = self.api.call(f"{name} tells the robot {content!r}", "POST", "/_sim/wecom/say", json=body)
        if said.get("status") != 200 or not said.get("reply"):
            raise DemoFailure(f"the robot did not answer {name}'s {content!r}: {said}")
        return said["reply"]

    def bind(self, name: str, token: str) -> None:
        reply = self.robot(name, "绑定")
        found = re.search(r"绑定码：\s*(\S+)", reply)
        if not found:
            raise DemoFailure(f"no binding code in the robot's answer: {reply!r}")
        self.api.call(
            f"{name} confirms the binding", "POST", "/api/v1/me/chat-bindings", token=token, json={"code": found[1]}
        )

    def wallet(self, token: str) -> int:
        return self.api.call("read a wallet", "GET", "/api/v1/me/wallet", token=token)["cash_fen"]

    def upload_steps(self, name: str, token: str, day: date) -> None:
        start = int(datetime.combine(day, time(0), tzinfo=BEIJING).timestamp())
        phone = {"name": self.person(name), "steps": [[start, STEPS[name]]]}
        data = self.api.call(f"{name}'s phone reads WeRun", "POST", "/_sim/werun", json=phone)
        self.api.call(f"{name} uploads WeRun data", "POST", "/api/v1/me/werun", token=token, json=data)

    def challenge_packet(self, token: str) -> dict:
        packets = self.api.call("read Bob's packets", "GET", "/api/v1/me/red-packets", token=token)["items"]
        found = [p for p in packets if p["issuer_type"] == "user" and p["status"] in ("issued", "claimed")]
        if not found:
            raise DemoFailure(f"Bob holds no packet issued by a person: {packets}")
        return found[0]


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
