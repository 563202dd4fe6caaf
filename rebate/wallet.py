"""The person's wallet spent on an order: rebate balance (fen) and points, at checkout.

An order may ask to spend some of the buyer's cash balance (``user_cash``) and points (``user_points``).
The life of that money, every step a ledger entry keyed by the order (or the refund), so it moves once:

- **reserve**, with the order, under the person's row lock (``payouts.operations.lock_user``: the lock
  withdrawals, challenge stakes and clawbacks take, so two orders, or an order and a withdrawal, racing for
  one balance take turns and the second sees what the first left): ``user_cash`` → ``user_cash_held`` and
  ``user_points`` → ``user_points_held``. Asking for more than the person holds is refused with nothing
  written. What is used is capped so the payable stays at least 1 fen: points first (whole points, at the
  ``POINT_VALUE_FEN`` the shell passes in, kept on the order), then balance fills the rest to the fen;
  the order says what was used.
- **release**, when the order closes unpaid (``rebate.orders.close_order``, the one close path: the expiry
  job and WeChat's close both end there): held → back to what the person holds.
- **spend**, on payment (``rebate.payments``): the held balance, and the platform's marketing fund for the
  points' value (points are the platform's to honour: they were issued from ``points_issuance``, which takes
  the points back), pay the merchant beside WeChat's payment and the packets' funders, so the merchant's
  sale is the order total. WeChat charged only the payable: ``paid_fen`` (payer_total) never includes the
  wallet, so a rule on the ``paid`` base never rebates it; one on ``order_total`` does.
- **give back**, on each successful refund: balance and points in proportion to the refunded share of what
  WeChat was paid, rounded down and cumulative (what the new refunded total entitles, less what was given
  back already), so a full refund gives back all of it; the merchant's sale pays it back.

Service-provider mode (``FUND_FLOW=service_provider``) refuses any wallet use: the balance is money the
platform holds, and spending it on a sub-merchant's order would be the platform paying part of a merchant's
order outside WeChat Pay (二清; see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import AccountRef, Batch, Leg, balance, post, ref
from models import AccountKind, Order, Refund, User, db
from money import MAX_FEN, format_yuan
from payouts.operations import lock_user
from rebate import tell
from rebate.errors import Invalid, RebateError


@dataclass(frozen=True)
class WalletAsk:
    """What an order asks to spend, and the settings it is judged under (passed in by the shell)."""

    balance_fen: int = 0
    points: int = 0
    point_value_fen: int = 1  # POINT_VALUE_FEN
    service_provider: bool = False  # FUND_FLOW=service_provider: refused

    def __post_init__(self) -> None:
        for field, value in (("use_balance_fen", self.balance_fen), ("use_points", self.points)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FEN:
                raise Invalid(f"{field} must be a whole number from 0 to {MAX_FEN}", code=f"invalid_{field}")
        if isinstance(self.point_value_fen, bool) or not isinstance(self.point_value_fen, int):
            raise ValueError("point_value_fen is an int")
        if self.point_value_fen < 1:
            raise ValueError("point_value_fen is positive")

    @property
    def empty(self) -> bool:
        return self.balance_fen == 0 and self.points == 0


@dataclass(frozen=True)
class WalletUse:
    """What an order takes from the wallet after capping."""

    balance_fen: int = 0
    points: int = 0
    points_value_fen: int = 0

    @property
    def fen(self) -> int:
        return self.balance_fen + self.points_value_fen


NOTHING = WalletUse()


class WalletRefused(RebateError):
    code, kind = "wallet_refused", "conflict"


def cash_ref(user_id: int) -> AccountRef:
    return ref(AccountKind.USER_CASH, "user", user_id)


def points_ref(user_id: int) -> AccountRef:
    return ref(AccountKind.USER_POINTS, "user", user_id)


def cash_held_ref(user_id: int) -> AccountRef:
    return ref(AccountKind.USER_CASH_HELD, "user", user_id)


def points_held_ref(user_id: int) -> AccountRef:
    return ref(AccountKind.USER_POINTS_HELD, "user", user_id)


def plan(user: User, ask: WalletAsk | None, room_fen: int) -> WalletUse:
    """What the order takes from the wallet, ``room_fen`` being what it may take (the payable less 1 fen).

    Asking for nothing locks nothing. Otherwise, under the person's row lock (held to the commit): refused in
    service-provider mode, for a person banned meanwhile, and for more than they hold; nothing is written."""
    if ask is None or ask.empty:
        return NOTHING
    if ask.service_provider:
        raise WalletRefused(
            "the wallet cannot pay for orders in service-provider mode: the balance is money the platform holds, "
            "and the order is paid to the merchant's own WeChat Pay account (the platform may not pay part of a "
            "merchant's order outside WeChat Pay)",
            code="wallet_not_in_service_provider_mode",
        )
    lock_user(user.id)
    db.session.refresh(user, attribute_names=["status"])  # a ban committed before our lock is seen
    if not user.is_active:
        raise WalletRefused("this account is banned", code="user_banned", kind="forbidden")
    if ask.balance_fen:
        held = balance(cash_ref(user.id))
        if held < ask.balance_fen:
            raise WalletRefused(
                f"{format_yuan(ask.balance_fen)} yuan of balance was asked; you hold {format_yuan(max(held, 0))}",
                code="insufficient_balance",
            )
    if ask.points:
        held = balance(points_ref(user.id))
        if held < ask.points:
            raise WalletRefused(f"{ask.points} points were asked; you hold {max(held, 0)}", code="insufficient_points")
    points = min(ask.points, room_fen // ask.point_value_fen)
    value = points * ask.point_value_fen
    return WalletUse(min(ask.balance_fen, room_fen - value), points, value)


def hold(order: Order) -> None:
    """Reserve what the (flushed) order uses: the person's balance and points move to their held accounts."""
    _move_reserved(order, "hold", "", to_held=True)


def release(order: Order) -> None:
    """The order closed unpaid: what it reserved goes back to the person (once: the keys name the order), and
    they are told (once)."""
    _move_reserved(order, "release", " released: closed unpaid", to_held=False)
    key = f"order:{order.id}:wallet:release"
    tell.tell([tell.wallet_returned(order, order.balance_used_fen, order.points_used, key, "closed_unpaid")])


def _move_reserved(order: Order, step: str, memo_tail: str, *, to_held: bool) -> None:
    """Balance and points between the person's accounts and their held ones, one entry each
    (keys ``order:<id>:wallet:<step>`` and ``…:<step>_points``)."""
    user_id = order.user_id
    moves = (
        ("", "balance reserved", order.balance_used_fen, cash_ref(user_id), cash_held_ref(user_id)),
        ("_points", "points reserved", order.points_used, points_ref(user_id), points_held_ref(user_id)),
    )
    for suffix, what, amount, free, held in moves:
        if not amount:
            continue
        source, target = (free, held) if to_held else (held, free)
        post(
            f"order:{order.id}:wallet:{step}{suffix}",
            f"{what} for order {order.out_trade_no}{memo_tail}",
            [Leg(source, -amount), Leg(target, amount)],
        )


def sale_legs(order: Order) -> list[Leg]:
    """The wallet's part of the order's sale entry (fen): the held balance, and the platform fund paying for the
    points, beside WeChat's payment and the packets' funders (together: the merchant's order total)."""
    legs = []
    if order.balance_used_fen:
        legs.append(Leg(cash_held_ref(order.user_id), -order.balance_used_fen))
    if order.points_value_fen:
        legs.append(Leg(ref(AccountKind.PLATFORM_MARKETING_FUND), -order.points_value_fen))
    return legs


def spend_points(order: Order, batch: Batch) -> None:
    """On payment, the held points are redeemed: they go back to ``points_issuance`` (the points ledger)."""
    if order.points_used:
        batch.add(
            f"order:{order.id}:wallet:spend_points",
            f"points redeemed on order {order.out_trade_no}",
            [
                Leg(points_held_ref(order.user_id), -order.points_used),
                Leg(ref(AccountKind.POINTS_ISSUANCE), order.points_used),
            ],
        )


def give_back(order: Order, refund: Refund) -> WalletUse:
    """A successful refund (``order.refunded_fen`` already counts it) gives back the wallet's share: balance and
    points in the refunded proportion of what WeChat was paid, rounded down, less what earlier refunds gave
    back; the merchant's sale pays it (the points' value back to the platform fund). Returns what moved now."""
    charged = order.payable_fen  # a WeChat Pay coupon's part included: WeChat refunds in proportion to it
    if not (order.balance_used_fen or order.points_used) or not charged:
        return NOTHING
    refunded = min(order.refunded_fen, charged)
    cash = order.balance_used_fen * refunded // charged - order.balance_returned_fen
    points = order.points_used * refunded // charged - order.points_returned
    value = points * (order.points_value_fen // order.points_used) if points else 0
    merchant = ref(AccountKind.MERCHANT_PAYABLE, "merchant", order.merchant_id)
    what = f"refund {refund.out_refund_no} of order {order.out_trade_no}"
    legs = []
    if cash:
        legs += [Leg(cash_ref(order.user_id), cash)]
    if value:
        legs += [Leg(ref(AccountKind.PLATFORM_MARKETING_FUND), value)]
    if legs:
        post(
            f"refund:{refund.id}:wallet",
            f"{what} gives back the wallet's share",
            [Leg(merchant, -(cash + value)), *legs],
        )
    if points:
        post(
            f"refund:{refund.id}:wallet_points",
            f"{what} gives back points",
            [Leg(ref(AccountKind.POINTS_ISSUANCE), -points), Leg(points_ref(order.user_id), points)],
        )
    order.balance_returned_fen += cash
    order.points_returned += points
    tell.tell([tell.wallet_returned(order, cash, points, f"refund:{refund.id}:wallet", "refunded")])
    return WalletUse(cash, points, value)
