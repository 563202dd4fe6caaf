"""Orders, their lines, refunds, and the record of payment notifications."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    case,
    false,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, db, utcnow
from models.sql import insert_ignoring
from money import left_after_refunds


class OrderStatus(StrEnum):
    CREATED = "created"  # waiting for payment
    PAID = "paid"
    CLOSED = "closed"  # never paid
    REFUNDED = "refunded"  # paid, then refunded in full


def net_paid_sql():
    """``Order.net_paid_fen`` as a column expression (``money.left_after_refunds``, rounded down the same way). The
    product is taken only for a coupon-paid order (``paid_fen`` below ``payable_fen``), never above a BIGINT there."""
    return case(
        (Order.status == OrderStatus.REFUNDED, 0),
        (Order.refunded_fen <= 0, Order.paid_fen),
        (Order.refunded_fen >= Order.payable_fen, 0),
        (Order.paid_fen == Order.payable_fen, Order.paid_fen - Order.refunded_fen),
        else_=(Order.payable_fen - Order.refunded_fen) * Order.paid_fen // Order.payable_fen,
    )


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    out_trade_no: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.CREATED)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    packet_id: Mapped[int | None] = mapped_column(ForeignKey("red_packets.id"))  # the first (or only) packet
    discount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    # The person's wallet spent on the order (``rebate.wallet``): rebate balance in fen, and points with the fen
    # they were worth at order time (POINT_VALUE_FEN then). Reserved with the order, released if it closes
    # unpaid, spent on payment; a refund gives them back in proportion (``*_returned``, cumulative).
    balance_used_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    points_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    points_value_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    balance_returned_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    points_returned: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    payable_fen: Mapped[int] = mapped_column(BigInteger)
    paid_fen: Mapped[int | None] = mapped_column(BigInteger)  # WeChat's payer_total
    # What of the payment 免充值 coupons paid (promotion_detail type NOCASH): WeChat never settles it (its 应结订单金额
    # is the rest), so the merchant of record funded it (``rebate.payments._post_sale``).
    unsettled_coupon_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    transaction_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # backtests read a window
    time_expire: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    channel: Mapped[str] = mapped_column(String(24), default="mini_program")
    review_reason: Mapped[str | None] = mapped_column(Text)  # set when flagged for an operator
    prepay_id: Mapped[str | None] = mapped_column(String(64))
    prepay_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last asked of WeChat by the order jobs
    # Service-provider fund flow: the sub-merchant the order was paid to (a snapshot at order time; None in
    # direct mode), and whether it was opened with ``settle_info.profit_sharing`` (its money stays frozen at
    # the sub-merchant until shared or unfrozen).
    sub_mchid: Mapped[str | None] = mapped_column(String(32))
    profit_sharing: Mapped[bool] = mapped_column(default=False, server_default=false())
    # What of the order's money is still frozen at its sub-merchant, in our books (``merchant_frozen_sales``):
    # the payable at the sale, less refunds paid from it and shares that reached persons; zero once the rest is
    # released to the merchant (``payouts.profit_share``). None: not a partner order.
    frozen_fen: Mapped[int | None] = mapped_column(BigInteger)
    # Where the order was placed from (the server-issued device, the network address), for risk.
    device: Mapped[str | None] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(45))
    # ``risk.net.net_of(ip)``, its /24 or /48, kept with it ("" for an ``ip`` that is no address): a ban on an address
    # or a network finds its orders by it (``rebate.milestones.held_orders``) instead of reading every order
    # placed over IPv6. NULL with an ``ip``: written before it was kept, filled by a job (``fill_order_networks``).
    ip_net: Mapped[str | None] = mapped_column(String(49), index=True)
    # The payment's risk verdict: score 0-100, the decision (allow | review | block), and ``risk`` the
    # features with their contributions in words and each campaign's decision (``risk.scoring``).
    risk_score: Mapped[int | None] = mapped_column(SmallInteger)
    risk_decision: Mapped[str | None] = mapped_column(String(8))
    risk: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    lines: Mapped[list[OrderLine]] = relationship(back_populates="order", order_by="OrderLine.id")

    __table_args__ = (
        CheckConstraint("status in ('created', 'paid', 'closed', 'refunded')", name="status"),
        CheckConstraint("total_fen > 0 and discount_fen >= 0 and payable_fen >= 1", name="amounts"),
        CheckConstraint(
            "payable_fen + discount_fen + balance_used_fen + points_value_fen = total_fen",
            name="payable_is_total_less_deductions",
        ),
        CheckConstraint(
            "balance_used_fen >= 0 and points_used >= 0 and points_value_fen >= 0"
            " and (points_used = 0) = (points_value_fen = 0)",
            name="wallet_amounts",
        ),
        CheckConstraint(
            "balance_returned_fen >= 0 and balance_returned_fen <= balance_used_fen"
            " and points_returned >= 0 and points_returned <= points_used",
            name="wallet_returned_within_used",
        ),
        CheckConstraint("refunded_fen >= 0 and refunded_fen <= payable_fen", name="refund_within_paid"),
        # the orders whose network is still to be filled (few once the job has run): found without a scan
        Index(
            "ix_orders_ip_net_unfilled",
            "id",
            postgresql_where=text("ip_net IS NULL AND ip IS NOT NULL"),
            sqlite_where=text("ip_net IS NULL AND ip IS NOT NULL"),
        ),
    )

    @property
    def paid_after_close(self) -> bool:
        """Closed here, then paid at WeChat anyway: the payment is owed back (``rebate.refunds.take_late_payment``)."""
        return self.status == OrderStatus.CLOSED and self.transaction_id is not None

    @property
    def net_total_fen(self) -> int:
        """The goods value left after refunds: ``total_fen`` in the proportion of what WeChat charged that was not
        refunded (``money.left_after_refunds``; a WeChat Pay coupon's part of a refund counts as refunded)."""
        if self.status == OrderStatus.REFUNDED:
            return 0
        return left_after_refunds(self.total_fen, self.payable_fen, self.refunded_fen)

    @property
    def net_paid_fen(self) -> int:
        """The buyer's payment less its part of the refunds (``money.left_after_refunds``): the rebate base left.
        ``refunded_fen`` counts what WeChat refunded, a WeChat Pay coupon's part included."""
        if self.status == OrderStatus.REFUNDED:  # (a coupon-paid order refunded up to its paid_fen, as before)
            return 0
        return left_after_refunds(self.paid_fen or 0, self.payable_fen, self.refunded_fen)

    @property
    def wallet_fen(self) -> int:
        """What the person's wallet paid: balance plus the points' value (never part of ``paid_fen``)."""
        return self.balance_used_fen + self.points_value_fen


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    category: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[int]
    unit_price_fen: Mapped[int] = mapped_column(BigInteger)
    line_total_fen: Mapped[int] = mapped_column(BigInteger)

    order: Mapped[Order] = relationship(back_populates="lines")

    __table_args__ = (CheckConstraint("quantity > 0 and unit_price_fen > 0", name="positive"),)


class OrderPacket(Base):
    """A red packet spent on an order and the discount it gave (several when campaigns allow stacking)."""

    __tablename__ = "order_packets"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    # indexed by itself too: a packet's uses, found from the packet (an audience run's uptake)
    packet_id: Mapped[int] = mapped_column(ForeignKey("red_packets.id"), primary_key=True, index=True)
    discount_fen: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("discount_fen > 0", name="positive"),)


class RefundStatus(StrEnum):
    PENDING = "pending"  # asked of WeChat, not finished
    SUCCEEDED = "succeeded"
    ABNORMAL = "abnormal"
    CLOSED = "closed"
    FAILED = "failed"


# Refunds that may still move money: pending, and abnormal (WeChat finishes one once the merchant resolves it there).
OPEN_REFUNDS = (RefundStatus.PENDING, RefundStatus.ABNORMAL)


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    out_refund_no: Mapped[str] = mapped_column(String(64), unique=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=RefundStatus.PENDING)
    refund_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # WeChat's times. ``requested_at``: when it took the refund request (退款申请时间: the create_time of its answers,
    # or the time of the refund's row in its trade bill), whose Beijing day is the bill that lists the refund
    # (``payouts.reconcile``). ``finished_at``: when it finished it, its success_time for a success (the reports count
    # a refund on that day); our clock for one closed, abnormal or refused, or a success whose time WeChat did not
    # give readably. ``applied_at``: our clock when WeChat's word on it was applied here.
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last asked of WeChat by the refund job
    # Times the refund job sent the refund again, WeChat's query having said it never heard of it: bounded
    # (``jobs.orders.MAX_RESENDS``), then an operator is alerted and it is only asked about.
    resends: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")

    __table_args__ = (
        # BRIN on PostgreSQL (a btree on SQLite): the reports' rollups read one Beijing day at a time
        Index("ix_refunds_finished_at", "finished_at", postgresql_using="brin"),
        Index("ix_refunds_applied_at", "applied_at", postgresql_using="brin"),  # the reports' late refunds
        CheckConstraint("amount_fen > 0", name="positive"),
        CheckConstraint("status in ('pending', 'succeeded', 'abnormal', 'closed', 'failed')", name="status"),
        # WeChat's refund number, looked up by every refund notice (``rebate.refunds._refund_id_disagrees``)
        Index("ix_refunds_refund_id", "refund_id"),
    )


class PaymentNotification(Base):
    """Every WeChat notification id we processed: a repeat is answered and skipped."""

    __tablename__ = "payment_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[str] = mapped_column(String(64), unique=True)
    out_trade_no: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(24))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationKind(StrEnum):
    """What a WeChat notification was about: the prefix its recorded outcome carries."""

    PAYMENT = ""
    REFUND = "refund_"
    TRANSFER = "transfer_"


def refund_open(order_id: int) -> bool:
    """Whether a refund of the order may still move money (``OPEN_REFUNDS``): its payouts wait meanwhile."""
    found = select(Refund.id).where(Refund.order_id == order_id, Refund.status.in_(OPEN_REFUNDS)).limit(1)
    return db.session.execute(found).first() is not None


def notification_seen(notification_id: str, ref: str, kind: NotificationKind) -> bool:
    """Has this WeChat notification been processed: this id, for this order or bill (``ref``), of this kind?

    WeChat's ids are unique; one reused for another order or kind is not taken as a repeat (its notice is applied
    on its own merits, the order's state deciding), nor does it fail (``note_notification`` keeps the first)."""
    others = [k for k in NotificationKind if k and k != kind]
    of_kind = (
        PaymentNotification.outcome.startswith(kind.value)
        if kind
        else ~or_(*(PaymentNotification.outcome.startswith(k.value) for k in others))
    )
    seen = select(PaymentNotification.id).where(
        PaymentNotification.notification_id == notification_id, PaymentNotification.out_trade_no == ref[:32], of_kind
    )
    return db.session.execute(seen).first() is not None


def note_notification(notification_id: str | None, ref: str, kind: NotificationKind, outcome: str) -> None:
    """Note the notification as processed: one INSERT, now (not an object left to the next flush); an id already
    noted (for another order or kind: ``notification_seen``) keeps its first note."""
    if notification_id:
        row = {
            "notification_id": notification_id,
            "out_trade_no": ref[:32],
            "outcome": f"{kind.value}{outcome}",
            "received_at": utcnow(),
        }
        insert_ignoring(PaymentNotification.__table__, [row], ("notification_id",))
