"""Creating orders from product lines with optional red packets and wallet use, and closing unpaid ones."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, event, select, update

from models import Campaign, Order, OrderLine, OrderPacket, OrderStatus, PacketStatus, Product, RedPacket, User, db
from models.base import beijing
from models.triggers import TriggerKind
from money import MAX_FEN
from rebate.campaigns import serves
from rebate.covered_debts import settle_covered
from rebate.errors import Invalid, NotFound, StateConflict
from rebate.fund_flow import pay_to_sub_merchant, refuse_sales_funded_packets
from rebate.packets import check_audience, release_packet, state_refusal
from rebate.wallet import WalletAsk
from rebate.wallet import hold as hold_wallet
from rebate.wallet import plan as plan_wallet
from rebate.wallet import release as release_wallet
from risk import identifiers
from risk.net import net_of

ORDER_TTL = timedelta(minutes=30)
PREPAY_MARGIN = timedelta(minutes=1)  # WeChat takes a prepay only with a minute left before ``time_expire``
MAX_QUANTITY = 999
MIN_PAYABLE_FEN = 1  # WeChat's minimum


@event.listens_for(Order.ip, "set")
def _keep_ip_net(order: Order, ip: str | None, _old, _initiator) -> None:
    """``Order.ip_net`` follows ``Order.ip`` however it is set (a ban's lift finds orders by it)."""
    order.ip_net = network_of(ip)


def network_of(ip: str | None) -> str | None:
    """What ``Order.ip_net`` holds for ``ip``: its /24 or /48; "" for text that is no address (filled: nothing to
    find it by); None for none."""
    return None if ip is None else net_of(ip) or ""


def fill_order_networks(batch: int = 1000) -> int:
    """``Order.ip_net`` of up to ``batch`` orders written before it was kept (``ix_orders_ip_net_unfilled``), lowest
    ids first; how many. The caller commits: a short transaction per batch, never the whole table at once."""
    rows = db.session.execute(
        select(Order.id, Order.ip)
        .where(Order.ip_net.is_(None), Order.ip.is_not(None))
        .order_by(Order.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    if rows:
        orders = Order.__table__
        db.session.execute(
            update(orders).where(orders.c.id == bindparam("order_id")).values(ip_net=bindparam("net")),
            [{"order_id": order_id, "net": network_of(ip)} for order_id, ip in rows],
        )
    return len(rows)


@dataclass(frozen=True)
class LineRequest:
    product_id: int
    quantity: int


def last_prepay(order: Order) -> datetime:
    """From this moment the order can no longer be paid (``/pay`` answers ``order_expired``): its packets and
    wallet wait for the close job."""
    return order.time_expire - PREPAY_MARGIN


def new_out_trade_no(now: datetime) -> str:
    """Ours, unique, 6-32 of [0-9A-Za-z]; fixed before WeChat sees it."""
    return f"O{now:%Y%m%d}{secrets.token_hex(8).upper()}"


def _load_products(lines: list[LineRequest]) -> dict[int, Product]:
    ids = {line.product_id for line in lines}
    products = {p.id: p for p in db.session.execute(select(Product).where(Product.id.in_(ids))).scalars()}
    missing = sorted(ids - {pid for pid, p in products.items() if p.active})
    if missing:
        raise NotFound(f"no such product: {missing}", code="product_not_found")
    if len({p.merchant_id for p in products.values()}) != 1:
        raise Invalid("one order buys from one merchant", code="mixed_merchants")
    return products


def _order_lines(lines: list[LineRequest], products: dict[int, Product]) -> list[OrderLine]:
    if not lines:
        raise Invalid("an order needs at least one line", code="empty_order")
    result = []
    for line in lines:
        if not 0 < line.quantity <= MAX_QUANTITY:
            raise Invalid(f"quantity must be 1 to {MAX_QUANTITY}", code="invalid_quantity")
        product = products[line.product_id]
        result.append(
            OrderLine(
                product_id=product.id,
                category=product.category,
                quantity=line.quantity,
                unit_price_fen=product.price_fen,
                line_total_fen=product.price_fen * line.quantity,
            )
        )
    return result


def _usable_packet(
    packet_id: int, user: User, merchant_id: int, lines: list[OrderLine], now: datetime, channel: str
) -> tuple[RedPacket, int]:
    """Lock and check the caller's packet; returns (packet, its face for these lines). Someone else's is 404."""
    packet = db.session.execute(
        select(RedPacket).where(RedPacket.id == packet_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if packet is None or packet.owner_id != user.id:
        raise NotFound("no such red packet", code="packet_not_found")
    if packet.status != PacketStatus.ISSUED:
        refusal = state_refusal(packet.status)
        holder = db.session.get(Order, packet.order_id) if packet.status == PacketStatus.LOCKED else None
        if holder is not None and holder.user_id == user.id:  # say which order, and until when it holds it
            words = (
                f"this red packet is held by your unpaid order {holder.out_trade_no}: pay that order, or it comes "
                f"back once the order closes unpaid, after {beijing(holder.time_expire):%Y-%m-%d %H:%M} Beijing time"
                if now < last_prepay(holder)
                else f"this red packet is held by your unpaid order {holder.out_trade_no}, which has expired and can "
                "no longer be paid: the packet comes back within a few minutes, once it is closed"
            )
            refusal = StateConflict(words, code=refusal.code)
        raise refusal
    if now < packet.valid_from:
        raise StateConflict(  # the person's clock is Beijing's
            f"this red packet is valid from {beijing(packet.valid_from):%Y-%m-%d %H:%M} Beijing time",
            code="packet_not_yet_valid",
        )
    if now >= packet.expires_at:
        raise StateConflict("this red packet has expired", code="packet_expired")
    campaign = db.session.get(Campaign, packet.campaign_id)
    if (packet.merchant_id is not None and packet.merchant_id != merchant_id) or not serves(campaign, merchant_id):
        raise Invalid("this red packet is for another merchant", code="packet_wrong_merchant")
    check_audience(campaign, user, channel, now)
    eligible = sum(li.line_total_fen for li in lines if _in_scope(packet, li))
    if eligible == 0:
        scope = ", ".join(packet.categories) or f"products {packet.products}"
        raise Invalid(f"this red packet only applies to {scope}", code="packet_wrong_category")
    if eligible < packet.min_spend_fen:
        raise Invalid(
            f"spend at least {packet.min_spend_fen} fen on eligible goods to use this packet", code="below_min_spend"
        )
    return packet, _face_for(packet, eligible)


def _in_scope(packet: RedPacket, line: OrderLine) -> bool:
    in_category = not packet.categories or line.category in packet.categories
    return in_category and (not packet.products or line.product_id in packet.products)


def _face_for(packet: RedPacket, eligible_fen: int) -> int:
    """A tiered packet gives the best tier the eligible spend reaches (5 off, or 10 off from 50)."""
    if not packet.tiers:
        return min(packet.amount_fen, eligible_fen)
    reached = [t["amount_fen"] for t in packet.tiers if eligible_fen >= t["min_spend_fen"]]
    if not reached:
        lowest = min(t["min_spend_fen"] for t in packet.tiers)
        raise Invalid(f"spend at least {lowest} fen on eligible goods to use this packet", code="below_min_spend")
    return min(max(reached), eligible_fen)


def _check_stacking(packets: list[RedPacket]) -> None:
    """One packet per order unless every campaign involved allows as many as are stacked."""
    if len({p.id for p in packets}) != len(packets):
        raise Invalid("the same red packet is listed twice", code="packet_repeated")
    for packet in packets:
        allowed = db.session.get(Campaign, packet.campaign_id).max_packets_per_order
        if len(packets) > allowed:
            raise Invalid(
                f"red packet {packet.id} cannot be combined with {len(packets) - 1} other(s) "
                f"(its campaign allows {allowed} per order)",
                code="stacking_not_allowed",
            )


def _discounts(packets_faces: list[tuple[RedPacket, int]], lines: list[OrderLine], total: int) -> list[int]:
    """Each packet takes from the value left on its own lines, so stacked packets never discount a line twice;
    the payable stays at least 1 fen. A packet that would take nothing is refused. The discounts come back in
    the order of ``packets_faces``.

    Packets limited to categories or products take first (fewest lines in scope first), packets for anything
    last (ties in listed order): first a fen each, then each in turn as much as its face, the lines in scope and
    the room let it. A packet is refused only when no way of sharing gives every packet a fen, never for the
    order the mini-program listed them in. Which line each fen comes from stays open to the end: a packet taken
    earlier gives up a line a later one needs for another line of its own (``_Sharing``), so the packets together
    take the most they can (a 3-yuan packet for coffee or food never takes the coffee a 7-yuan packet for coffee
    or biscuits needs while the sandwich is free), whatever order the lines were listed in; a packet for
    anything is the one cut short when only the 1 fen to pay is left."""
    scopes = [[i for i, li in enumerate(lines) if _in_scope(packet, li)] for packet, _ in packets_faces]

    def narrowest_first(k: int) -> tuple[bool, int]:  # a packet for anything last, then by lines in scope
        packet = packets_faces[k][0]
        return not packet.categories and not packet.products, len(scopes[k])

    turns = sorted(range(len(packets_faces)), key=narrowest_first)  # (sorted is stable)
    sharing = _Sharing(scopes, [li.line_total_fen for li in lines], total - MIN_PAYABLE_FEN)
    for k in turns:
        if not sharing.take(k, 1):
            raise Invalid(
                f"red packet {packets_faces[k][0].id} would take nothing off this order (at least 1 fen must be paid)",
                code="packet_no_discount",
            )
    for k in turns:
        sharing.take(k, packets_faces[k][1] - 1)
    return [sum(taken.values()) for taken in sharing.taken]


class _Sharing:
    """What each packet takes from each line in its scope (``taken[packet][line]``), no line giving more than its
    value and all of them no more than ``room`` (a flow, grown by augmenting paths: at most five packets)."""

    def __init__(self, scopes: list[list[int]], left: list[int], room: int) -> None:
        self.scopes, self.left, self.room = scopes, list(left), room
        self.taken: list[dict[int, int]] = [{} for _ in scopes]

    def take(self, k: int, want: int) -> int:
        """Up to ``want`` more fen for packet ``k``, what the others took staying what it was (a line they took
        from may change); returns how many."""
        got = 0
        while got < want and self.room > 0:
            path = self._path(k)
            if path is None:
                break
            # packet, line it takes more from, packet giving up that line for the next line, …, a line with value left
            fen = min(want - got, self.room, self.left[path[-1]])
            fen = min([fen] + [self.taken[path[j + 1]][path[j]] for j in range(1, len(path) - 1, 2)])
            for j in range(0, len(path) - 1, 2):
                packet, line = path[j], path[j + 1]
                self.taken[packet][line] = self.taken[packet].get(line, 0) + fen
                if j + 2 < len(path):
                    self.taken[path[j + 2]][line] -= fen
            self.left[path[-1]] -= fen
            self.room -= fen
            got += fen
        return got

    def _path(self, k: int) -> list[int] | None:
        """The shortest chain from packet ``k`` to a line with value left: [k, line, packet, line, …, line], each
        packet after ``k`` having taken from the line before it (breadth first)."""
        came: dict[int, tuple[int, int] | None] = dict.fromkeys(self.scopes[k])  # line → (line, packet) before
        queue = list(self.scopes[k])
        for line in queue:
            if self.left[line] > 0:
                path = [line]
                while came[path[-1]] is not None:
                    before, packet = came[path[-1]]
                    path += [packet, before]
                return [k, *reversed(path)]
            for packet, taken in enumerate(self.taken):
                if packet != k and taken.get(line, 0) > 0:
                    for nxt in self.scopes[packet]:
                        if nxt not in came:
                            came[nxt] = (line, packet)
                            queue.append(nxt)
        return None


MAX_WECHAT_PAYMENT_FEN = 2**31 - 1  # amount.total of a Pay v3 order is an int (32 bits)


def create_order(
    user: User,
    lines: list[LineRequest],
    packet_ids: int | list[int] | None,
    now: datetime,
    channel: str = "mini_program",
    *,
    device: str | None = None,
    ip: str | None = None,
    wallet: WalletAsk | None = None,
    service_provider: bool | None = None,
) -> Order:
    """A new unpaid order; its packets (if any) are locked until payment or close.

    ``service_provider`` (``FUND_FLOW=service_provider``): paid to the merchant's sub-merchant number
    (``rebate.fund_flow.pay_to_sub_merchant``, which refuses what would pool money); False (direct): paid to the
    platform, which refuses the packets of a campaign funded from its merchant's sales; None: the caller routes the
    order itself (tests that open partner orders by hand).

    ``device`` and ``ip`` (where it was placed from, when a request says) are kept on the order for risk and
    noted among the person's identifiers. ``wallet``: balance and points to spend on it (``rebate.wallet``),
    capped so at least 1 fen is paid, reserved with the order under the person's row lock (after the packets':
    a payment locks packets before the buyer's row too)."""
    products = _load_products(lines)
    order_lines = _order_lines(lines, products)
    merchant_id = next(iter(products.values())).merchant_id
    total = sum(li.line_total_fen for li in order_lines)
    if total > MAX_FEN:  # the sale could never be posted (the ledger's bound): refused before WeChat takes the money
        raise Invalid(f"an order may total at most {MAX_FEN} fen; this one totals {total}", code="order_too_large")
    ids = [] if packet_ids is None else [packet_ids] if isinstance(packet_ids, int) else list(packet_ids)
    # Locked in ascending id order, as everywhere, so two orders racing for packets cannot deadlock.
    faces = {pid: _usable_packet(pid, user, merchant_id, order_lines, now, channel) for pid in sorted(set(ids))}
    chosen = [faces[pid] for pid in ids]
    _check_stacking([packet for packet, _ in chosen])
    discounts = _discounts(chosen, order_lines, total)
    used = plan_wallet(user, wallet, total - sum(discounts) - MIN_PAYABLE_FEN)
    if total - sum(discounts) - used.fen > MAX_WECHAT_PAYMENT_FEN:  # WeChat's amount.total is a 32-bit integer: such an
        # order held the buyer's packets and balance half an hour for a prepay WeChat could only refuse
        raise Invalid(
            f"WeChat Pay takes at most {MAX_WECHAT_PAYMENT_FEN} fen in one payment; this order asks "
            f"{total - sum(discounts) - used.fen}",
            code="order_too_large",
        )
    order = Order(
        out_trade_no=new_out_trade_no(now),
        user_id=user.id,
        merchant_id=merchant_id,
        total_fen=total,
        packet_id=chosen[0][0].id if chosen else None,
        discount_fen=sum(discounts),
        payable_fen=total - sum(discounts) - used.fen,
        balance_used_fen=used.balance_fen,
        points_used=used.points,
        points_value_fen=used.points_value_fen,
        time_expire=now + ORDER_TTL,
        channel=channel,
        created_at=now,
        lines=order_lines,
        device=device,
        ip=ip,
    )
    db.session.add(order)
    db.session.flush()
    for (packet, _), discount in zip(chosen, discounts, strict=True):
        packet.status, packet.order_id = PacketStatus.LOCKED, order.id
        db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=discount))
    db.session.flush()
    if service_provider:
        pay_to_sub_merchant(order)
    elif service_provider is False and chosen:
        refuse_sales_funded_packets(order)
    hold_wallet(order)
    identifiers.note(identifiers.USER, user.id, device, ip, now)
    return order


def earned_by(order: Order) -> tuple:
    """Where-clauses of the packets ``order`` earned when it was paid (order-paid triggers: ``issue_packet``'s source
    and source_ref)."""
    return RedPacket.source == TriggerKind.ORDER_PAID, RedPacket.source_ref == order.out_trade_no


def still_earned(packet: RedPacket, earner: Order | None = None) -> bool:
    """A packet an order-paid trigger gave stays earned while the goods value left of the order that earned it
    (``Order.net_total_fen``: in proportion to what WeChat charged) still reaches the trigger's minimum; any other
    packet is earned. A packet no longer earned is revoked when unspent, never restored or given back when spent.
    ``earner``: that order, when the caller holds it (read otherwise)."""
    if packet.source != TriggerKind.ORDER_PAID:
        return True
    by_number = select(Order).where(Order.out_trade_no == packet.source_ref)
    order = earner or db.session.execute(by_number).scalar_one_or_none()
    if order is None:
        return True
    minimum = db.session.get(Campaign, packet.campaign_id).issue_trigger.min_order_fen
    return order.net_total_fen >= minimum  # the goods value left, as the refund's rebates count it (0: refunded)


def order_packets(order: Order) -> list[tuple[RedPacket, int]]:
    """The order's packets with the discount each gave, row-locked in ascending id order."""
    rows = db.session.execute(_order_packets_statement(), {"order_id": order.id}).all()
    return [(packet, discount) for packet, discount in rows]


@functools.cache
def _order_packets_statement():
    """``order_packets``' SELECT, built once per process (building it and its cache key cost a payment more than
    a tenth of what reading the rows does)."""
    return (
        select(RedPacket, OrderPacket.discount_fen)
        .join(OrderPacket, OrderPacket.packet_id == RedPacket.id)
        .where(OrderPacket.order_id == bindparam("order_id", type_=OrderPacket.order_id.type))
        .order_by(RedPacket.id)
        .with_for_update(of=RedPacket)
        .execution_options(populate_existing=True)
    )


def lock_order(out_trade_no: str) -> Order | None:
    return db.session.execute(
        select(Order)
        .where(Order.out_trade_no == out_trade_no)
        .with_for_update()
        .execution_options(populate_existing=True)  # after waiting on the lock, see the winner's writes
    ).scalar_one_or_none()


def close_order(order: Order, now: datetime) -> None:
    """Close an unpaid order, unlock its packets (expired meanwhile: expire them) and give back the balance and
    points it reserved (once: only an open order closes)."""
    if order.status != OrderStatus.CREATED:
        raise StateConflict(f"a {order.status} order cannot be closed", code="order_not_open")
    order.status = OrderStatus.CLOSED
    release_wallet(order)
    if order.balance_used_fen or order.points_used:  # the balance or points came back up: what they cover of what
        settle_covered(order.user_id, None)  # the person owes is settled (points still below zero: by the job)
    for packet, _ in order_packets(order):
        if packet.status == PacketStatus.LOCKED and packet.order_id == order.id:
            if now >= packet.expires_at:
                release_packet(packet, PacketStatus.EXPIRED)
            elif not still_earned(packet) or packet.revoked_at is not None:
                # the order that earned it was refunded meanwhile, or a review's fraud outcome came while it was
                # locked (``rebate.reviews``): not issued back to spend again
                release_packet(packet, PacketStatus.REVOKED)
            else:
                packet.status, packet.order_id = PacketStatus.ISSUED, None
    db.session.flush()
