"""Typed WeChat Pay resources, parsed once at the edge: a payment, a refund's state, a transfer bill.

A decrypted ``TRANSACTION.SUCCESS`` resource and the answer to an order query
have one shape (a :class:`Transaction`); a ``REFUND.*`` resource and the answer
to a refund request or query share theirs (a :class:`RefundNotice`); a
``MCHTRANSFER.BILL.FINISHED`` resource and a transfer-bill query answer share
a :class:`TransferBill`. Each is read into a frozen value here, once: a missing
field, one of the wrong type, or a paid transaction without its amount raises
:class:`MalformedResource` naming the field, and nothing downstream reads the
raw dict again. Whether the values agree with our records (mchid, appid,
amount, payee) is not decided here: the rebate engine compares them once, in
``apply_payment`` / ``apply_refund_notice``, and the payouts in
``apply_transfer_notice``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wechat.errors import WeChatError

ID_CHARS = 64  # the longest number of WeChat's a column of ours holds (WeChat's own are at most 32)
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)  # WeChat's times lie between

PAID_STATES = frozenset({"SUCCESS", "REFUND"})  # REFUND: paid, then (partly) refunded
REFUND_STATES = frozenset({"SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"})
TRANSFER_STATES = frozenset(
    {"ACCEPTED", "PROCESSING", "WAIT_USER_CONFIRM", "TRANSFERING", "SUCCESS", "FAIL", "CANCELING", "CANCELLED"}
)
FINAL_TRANSFER_STATES = frozenset({"SUCCESS", "FAIL", "CANCELLED"})


class MalformedResource(WeChatError):
    """A verified resource or an API answer lacks a field or has one of the wrong type; nothing was applied.

    A callback answers 400 (WeChat retries it); a job leaves its row for the next run.
    """

    default_code = "MALFORMED_RESOURCE"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}", http_status=400)


@dataclass(frozen=True)
class Amount:
    """A paid transaction's amounts in fen: ``total_fen`` ordered, ``payer_total_fen`` what the payer paid."""

    total_fen: int
    payer_total_fen: int | None = None
    currency: str = "CNY"
    # What 免充值 coupons paid (``promotion_detail`` entries of type NOCASH): part of what the payer did not pay,
    # and never settled by WeChat (its 应结订单金额 is ``total_fen`` less this).
    unsettled_coupon_fen: int = 0
    coupons_fen: int = 0  # what all ``promotion_detail`` entries paid (never more than the payer was spared)


@dataclass(frozen=True)
class Transaction:
    """A WeChat Pay transaction: ``amount`` and ``transaction_id`` are always there once it is paid."""

    out_trade_no: str
    mchid: str
    appid: str
    trade_state: str
    amount: Amount | None = None
    transaction_id: str = ""
    payer_openid: str = ""
    success_time: datetime | None = None
    attach: str = ""
    trade_state_desc: str = ""
    sub_mchid: str | None = None  # partner mode: the sub-merchant paid (None: a direct transaction)
    sub_appid: str | None = None

    @property
    def paid(self) -> bool:
        return self.trade_state in PAID_STATES

    @classmethod
    def parse(cls, data: object) -> Transaction:
        """A direct transaction, or a partner one (``sp_mchid`` present): then ``mchid``/``appid`` are ours as
        the service provider (``sp_mchid``/``sp_appid``), ``sub_mchid`` is required and the payer is
        ``sp_openid`` or ``sub_openid``."""
        r = _Reader(data, "transaction")
        trade_state = r.text("trade_state")
        paid = trade_state in PAID_STATES
        partner = r.has("sp_mchid")
        prefix = "sp_" if partner else ""
        payer = _Reader(r.object("payer", required=False) or {}, "payer")
        openid = payer.text("sp_openid", required=False) or payer.text("sub_openid", required=False)
        return cls(
            out_trade_no=r.text("out_trade_no", max_len=ID_CHARS),
            mchid=r.text(prefix + "mchid"),
            appid=r.text(prefix + "appid"),
            trade_state=trade_state,
            amount=_amount(r.object("amount", required=paid), r),
            transaction_id=r.text("transaction_id", required=paid, max_len=ID_CHARS),
            payer_openid=openid if partner else payer.text("openid", required=False),
            success_time=r.time("success_time"),
            attach=r.text("attach", required=False),
            trade_state_desc=r.text("trade_state_desc", required=False),
            sub_mchid=r.text("sub_mchid") if partner else None,
            sub_appid=(r.text("sub_appid", required=False) or None) if partner else None,
        )


@dataclass(frozen=True)
class RefundNotice:
    """A refund's state as WeChat tells it. ``mchid`` comes with notifications only (None in API answers);
    ``refund_fen`` is always there when ``status`` is SUCCESS."""

    out_trade_no: str
    out_refund_no: str
    status: str
    refund_fen: int | None = None
    total_fen: int | None = None
    refund_id: str = ""
    transaction_id: str = ""
    mchid: str | None = None
    success_time: datetime | None = None
    user_received_account: str = ""
    sub_mchid: str | None = None  # a partner refund's sub-merchant, when WeChat names it
    settlement_refund_fen: int | None = None  # what WeChat took back from what it settled (API answers)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCESS"

    @classmethod
    def answer_about(cls, data: object, out_trade_no: str, out_refund_no: str) -> RefundNotice:
        """An API answer about our refund ``out_refund_no`` of order ``out_trade_no`` (a refund's creation or a
        query): one naming another refund or order is unreadable (``MalformedResource``), never applied as the
        state of another refund of ours, or booked as a refund begun elsewhere while ours is applied again later."""
        notice = cls.parse(data)
        if (notice.out_refund_no, notice.out_trade_no) != (out_refund_no, out_trade_no):
            raise MalformedResource(
                "out_refund_no",
                f"the answer is about refund {notice.out_refund_no!r} of order {notice.out_trade_no!r}; "
                f"we asked about refund {out_refund_no!r} of order {out_trade_no!r}",
            )
        return notice

    @classmethod
    def parse(cls, data: object) -> RefundNotice:
        """A ``REFUND.*`` resource (its state in ``refund_status``) or an API answer (in ``status``)."""
        r = _Reader(data, "refund")
        status = r.text("refund_status" if r.has("refund_status") else "status")
        if status not in REFUND_STATES:
            raise MalformedResource("status", f"unknown refund state {status!r}")
        amount = _Reader(r.object("amount", required=status == "SUCCESS") or {}, "amount")
        refund_fen = amount.fen("refund", required=status == "SUCCESS")
        if status == "SUCCESS" and refund_fen <= 0:
            raise MalformedResource("amount.refund", f"a refund of {refund_fen} fen")
        return cls(
            out_trade_no=r.text("out_trade_no", max_len=ID_CHARS),
            out_refund_no=r.text("out_refund_no", max_len=ID_CHARS),
            status=status,
            refund_fen=refund_fen,
            total_fen=amount.fen("total", required=False),
            refund_id=r.text("refund_id", required=False, max_len=ID_CHARS),
            transaction_id=r.text("transaction_id", required=False, max_len=ID_CHARS),
            # a partner REFUND.* resource names us as ``sp_mchid`` and the sub-merchant as ``sub_mchid``
            mchid=r.text("sp_mchid" if r.has("sp_mchid") else "mchid", required=False) or None,
            success_time=r.time("success_time"),
            user_received_account=r.text("user_received_account", required=False),
            sub_mchid=r.text("sub_mchid", required=False) or None,
            settlement_refund_fen=amount.fen("settlement_refund", required=False),
        )


@dataclass(frozen=True)
class RefundAnswer:
    """An API answer about a refund (its creation or a query), read: its state, and the times read from the answer
    itself: ``requested_at``, WeChat's create_time (when it took the request: the day its trade bill lists the
    refund), and ``unreadable_time``, a success_time given unreadably (dropped from ``notice``, kept as text)."""

    notice: RefundNotice
    requested_at: datetime | None = None
    unreadable_time: str | None = None

    @classmethod
    def read(cls, answer: object, out_trade_no: str, out_refund_no: str) -> RefundAnswer:
        """The one reader of a refund answer, for every caller that asks WeChat to refund or about a refund: one
        about another refund is unreadable (``RefundNotice.answer_about``); a success_time or create_time that is
        not an RFC 3339 time with its offset does not make the whole answer unreadable (the refund's money may
        have moved): the success_time is dropped (and kept as text), the create_time ignored."""
        data, unreadable = answer, None
        told = answer.get("success_time") if isinstance(answer, Mapping) else None
        if told not in (None, "") and _time_or_none(told) is None:
            data, unreadable = {k: v for k, v in answer.items() if k != "success_time"}, str(told)
        notice = RefundNotice.answer_about(data, out_trade_no, out_refund_no)
        created = _time_or_none(answer.get("create_time")) if isinstance(answer, Mapping) else None
        return cls(notice, created, unreadable)


def _time_or_none(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return read_time(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class TransferBill:
    """A 2025 transfer bill (商家转账) as WeChat tells it: our number, WeChat's, the state, who and how much.

    ``appid`` is in query answers but not among the notification's documented fields: None when absent.
    ``transfer_amount_fen`` and ``openid`` (the payee) are always there.
    """

    out_bill_no: str
    transfer_bill_no: str
    state: str
    mch_id: str
    transfer_amount_fen: int
    openid: str
    appid: str | None = None
    fail_reason: str = ""
    transfer_remark: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_TRANSFER_STATES

    @classmethod
    def parse(cls, data: object) -> TransferBill:
        r = _Reader(data, "transfer_bill")
        state = r.text("state")
        if state not in TRANSFER_STATES:
            raise MalformedResource("transfer_bill.state", f"unknown transfer state {state!r}")
        amount = r.fen("transfer_amount")
        if amount <= 0:
            raise MalformedResource("transfer_bill.transfer_amount", f"a transfer of {amount} fen")
        return cls(
            out_bill_no=r.text("out_bill_no", max_len=ID_CHARS),
            transfer_bill_no=r.text("transfer_bill_no", max_len=ID_CHARS),
            state=state,
            mch_id=r.text("mch_id"),
            transfer_amount_fen=amount,
            openid=r.text("openid"),
            appid=r.text("appid", required=False) or None,
            fail_reason=r.text("fail_reason", required=False),
            transfer_remark=r.text("transfer_remark", required=False),
            create_time=r.time("create_time"),
            update_time=r.time("update_time"),
        )


def _amount(data: Mapping[str, Any] | None, transaction: _Reader) -> Amount | None:
    if data is None:
        return None
    r = _Reader(data, "amount")
    total = r.fen("total")
    if total <= 0:
        raise MalformedResource("amount.total", f"a payment of {total} fen")
    payer_total = r.fen("payer_total", required=False)
    if payer_total is not None and not 0 <= payer_total <= total:
        raise MalformedResource("amount.payer_total", f"{payer_total} fen of a {total} fen payment")
    coupons, unsettled = _coupons(transaction.data.get("promotion_detail"))
    return Amount(total, payer_total, r.text("currency", required=False) or "CNY", unsettled, coupons)


def _coupons(promotions: object) -> tuple[int, int]:
    """What the ``promotion_detail`` entries paid in all, and what those of type NOCASH (免充值) paid of it; CASH
    (充值型) ones WeChat settles."""
    if promotions is None:
        return 0, 0
    if not isinstance(promotions, list):
        raise MalformedResource("promotion_detail", "is not a list")
    coupons = unsettled = 0
    for i, entry in enumerate(promotions):
        r = _Reader(entry, f"promotion_detail[{i}]")
        amount = r.fen("amount")
        if amount < 0:
            raise MalformedResource(f"promotion_detail[{i}].amount", f"{amount} fen")
        coupons += amount
        # any other type is taken as settled (CASH): the payment is booked, and the day's reconciliation shows the
        # order if WeChat settled less (refusing it would leave money WeChat took unbooked)
        if r.text("type", required=False).upper() in ("NOCASH", "NO_CASH"):  # (NO_CASH: the v2 spelling)
            unsettled += amount
    return coupons, unsettled


def read_time(value: str) -> datetime:
    """WeChat's RFC 3339 time (``2015-05-20T13:29:35+08:00``) with its offset, from 2000 to 2099; ``ValueError``
    saying what it is not otherwise."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ValueError("has no UTC offset")
    if not EARLIEST <= parsed < LATEST:  # year 1 or 9999 with an offset overflows when turned into UTC
        raise ValueError("is not from 2000 to 2099")
    return parsed


class _Reader:
    """Typed reads of one JSON object; every failure names the field."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise MalformedResource(where, "is not an object")
        self.data, self.where = data, where

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def _get(self, name: str, kind: type | tuple[type, ...], required: bool) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                raise MalformedResource(f"{self.where}.{name}", "is missing")
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MalformedResource(f"{self.where}.{name}", f"has the wrong type ({type(value).__name__})")
        return value

    def text(self, name: str, required: bool = True, max_len: int = 1024) -> str:
        value = self._get(name, str, required)
        if required and not value:
            raise MalformedResource(f"{self.where}.{name}", "is empty")
        if value and len(value) > max_len:  # (WeChat's numbers are at most 32 characters; ours hold 64)
            raise MalformedResource(f"{self.where}.{name}", f"is longer than {max_len} characters")
        return value or ""

    def fen(self, name: str, required: bool = True) -> int | None:
        return self._get(name, int, required)

    def object(self, name: str, required: bool = True) -> Mapping[str, Any] | None:
        return self._get(name, Mapping, required)

    def time(self, name: str) -> datetime | None:
        """WeChat's RFC 3339 time (``2015-05-20T13:29:35+08:00``); absent is None, anything else must parse."""
        value = self._get(name, str, required=False)
        if not value:
            return None
        try:
            return read_time(value)
        except ValueError as why:
            raise MalformedResource(f"{self.where}.{name}", f"{value!r} {why}") from None
