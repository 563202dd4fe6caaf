"""Daily reconciliation against WeChat's trade bill (orders, refunds) and fund-flow bill (payouts, and the money
WeChat gave back for them: a cash red packet nobody opened, refunded after 24 h, is income on its refund day).

Three steps, none of which commits: :func:`start_runs` marks the day's runs
``running``; :func:`fetch_bills` downloads (SHA-1 checked) and parses both bills
and never touches the database; :func:`write_results` matches and writes every
result. The job (``jobs.payouts.reconcile_day``) commits between them, so no
transaction is open while WeChat is asked. A bill that cannot be fetched, verified or parsed fails its run
and records nothing else — no partial results. A rerun of a day updates the
same run and mismatch rows (see :mod:`models.reconciliation`).

Service-provider mode: the orders are paid to the merchants' sub-merchant numbers, and the day has one
trade run per sub-merchant (:func:`sub_merchants_to_reconcile`), each matching that sub-merchant's bill
(``/v3/bill/tradebill?sub_mchid=``) against the orders paid to it. The fund-flow bill stays ours.

A bill's summary must be there and agree with its detail lines (count and totals), or its run fails. A trade line
naming another merchant (商户号 not ours, or 特约商户号 not the bill's sub-merchant) is never matched to our
order of the same number: it is a finding of its own (``<number>@<merchant>``), beside the rest of the bill.
Any failure while fetching or parsing a bill fails that bill's run only; a failure while writing the results
fails the day's runs, with an alert, in a fresh transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError

from ledger import CheckReport, check_ledger
from models import (
    Merchant,
    Order,
    OrderStatus,
    Payout,
    PayoutStatus,
    Rail,
    Refund,
    RefundStatus,
    alert_once,
    db,
)
from models.base import BEIJING, beijing
from models.reconciliation import (
    BillKind,
    MismatchKind,
    ReconciliationMismatch,
    ReconciliationRun,
    RunStatus,
    SubjectType,
)
from models.sql import insert_ignoring
from payouts.bill_lines import (
    FUND_SUMMARY_COLUMNS,
    TRADE_SUMMARY_COLUMNS,
    FundLine,
    TradeLine,
    TradeTotals,
    check_fund_summary,
    fund_line,
    trade_line,
)
from wechat.bills import BillReader, bill_answer
from wechat.errors import WeChatError
from wechat.partner import SubMerchant
from wechat.pay import PayClient

log = logging.getLogger(__name__)

NO_BILL = "NO_STATEMENT_EXIST"  # WeChat's answer for a day without a single movement: an empty bill
FUND_RAILS = (Rail.WECHAT_CHANGE, Rail.CASH_RED_PACKET)  # the rails whose money shows in the fund-flow bill
WECHAT_REFUND_DONE = frozenset({"SUCCESS", "PROCESSING"})  # a bill's PROCESSING refund counts as done
IN_CHUNK, ALERT_LISTED = 500, 10
OURS = ""  # the sub_mchid of a bill of our own merchant number (direct mode's trade bill, the fund-flow bill)
NO_SUB = frozenset({"", "0"})  # 特约商户号 of a line of our own merchant number's bill
REF_MAX, REF_KEPT = 64, 48  # subject_ref's column; a longer ref keeps its start and a digest of the whole
ERROR_MAX = 2_000


MISSING_HERE, MISSING_THERE = MismatchKind.MISSING_HERE, MismatchKind.MISSING_THERE
AMOUNT_DIFFERS, STATUS_DIFFERS = MismatchKind.AMOUNT_DIFFERS, MismatchKind.STATUS_DIFFERS
# A payout that never reached the person (its money back in the person's balance here): a transfer bill WeChat closed
# or we cancelled unconfirmed. WeChat giving its money back agrees with our books.
NEVER_PAID = frozenset({PayoutStatus.FAILED, PayoutStatus.CANCELLED})
RETURNED = ":returned"  # a payout's return (income in the fund-flow bill): its own subject, beside the payout


@dataclass(frozen=True)
class Finding:
    kind: MismatchKind
    subject_type: SubjectType
    subject_ref: str
    ours_fen: int | None
    theirs_fen: int | None
    detail: str


Verdict = tuple[MismatchKind, int | None, int | None, str] | None  # kind, ours, theirs, detail; None = matched


@dataclass
class Matching:
    findings: list[Finding] = field(default_factory=list)
    matched: int = 0

    def judge(self, subject_type: SubjectType, ref: str, verdict: Verdict) -> None:
        if verdict is None:
            self.matched += 1
        else:
            self.findings.append(Finding(verdict[0], subject_type, subject_ref(ref), *verdict[1:]))


def subject_ref(ref: str) -> str:
    """``ref`` as stored (64 characters at most): a longer one keeps its first 48 characters and a digest of the
    whole, so two long numbers that agree on their start stay two subjects."""
    if len(ref) <= REF_MAX:
        return ref
    digest = hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest()[: REF_MAX - REF_KEPT - 1]
    return f"{ref[:REF_KEPT]}~{digest}"


def _clean(text: str) -> str:
    """Text for a database column and an alert: no NUL (PostgreSQL refuses it), not unbounded."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX] + "…"


@dataclass
class BillOutcome:
    kind: BillKind
    sub_mchid: str = OURS
    hash_value: str | None = None
    lines: list[Any] = field(default_factory=list)
    error: str | None = None
    mchid: str | None = None  # our merchant number, which each trade line must name (None: not checked)
    number_prefix: str | None = None  # WECHAT_NUMBER_PREFIX of our payout numbers (None: not told)


@dataclass
class DailyChecks:
    runs: list[ReconciliationRun]
    ledger: CheckReport
    caught_up: list[date] = field(default_factory=list)  # earlier days reconciled again (``days_to_catch_up``)


CATCH_UP_DAYS = 7  # the daily job also reconciles the days of the week before yesterday it missed or failed
STALE_RUN = timedelta(hours=1)  # a run still ``running`` this long after it began died with its process


def days_to_catch_up(yesterday: date, now: datetime) -> list[date]:
    """The days of the ``CATCH_UP_DAYS`` before ``yesterday`` (none before the first order) that no run reconciled:
    never run (the jobs were down at 10:30), failed (a bill not ready yet: ``STATEMENT_CREATING``; a download cut
    off), or left ``running`` by a process that died; and those reconciled before a refund their bill lists was
    applied here (``_days_refunds_changed``). The daily job reconciles them again after yesterday."""
    first = db.session.execute(select(func.min(Order.created_at))).scalar()
    if first is None:
        return []
    since = max(yesterday - timedelta(days=CATCH_UP_DAYS), beijing(first).date())
    rows = db.session.execute(
        select(ReconciliationRun.bill_date, ReconciliationRun.status, ReconciliationRun.started_at).where(
            ReconciliationRun.bill_date >= since.isoformat(), ReconciliationRun.bill_date < yesterday.isoformat()
        )
    ).all()
    done, undone = set(), set()
    for day, status, started_at in rows:
        alive = status == RunStatus.RUNNING and started_at > now - STALE_RUN  # another node's, at work now
        (done if status == RunStatus.DONE or alive else undone).add(day)
    undone |= _days_refunds_changed(since, yesterday)
    days = [since + timedelta(days=n) for n in range((yesterday - since).days)]
    return [d for d in days if d.isoformat() not in done or d.isoformat() in undone]


def _days_refunds_changed(since: date, yesterday: date) -> set[str]:
    """The days from ``since`` to before ``yesterday`` whose trade bill was reconciled (done) before what we know of
    a refund it lists changed: a refund applied after that run (its notification lost, WeChat's word found by a
    query days later, perhaps after its day was final elsewhere), or one whose open finding there (expected, not in
    the bill) another day's bill has since shown to be that day's. Reconciled again, against the same bill: the
    refund matches on its own day, or a finding stays there; never on the day it was applied."""
    runs = (
        select(ReconciliationRun.bill_date, func.min(ReconciliationRun.finished_at))
        .where(
            ReconciliationRun.kind == BillKind.TRADE,
            ReconciliationRun.status == RunStatus.DONE,
            ReconciliationRun.bill_date >= since.isoformat(),
            ReconciliationRun.bill_date < yesterday.isoformat(),
        )
        .group_by(ReconciliationRun.bill_date)
    )
    days = set()
    for bill_date, finished in db.session.execute(runs).all():
        if finished is None:  # (a run marked done with no end: nothing to compare with)
            continue
        start, end = _day_window(date.fromisoformat(bill_date))
        applied_since = select(Refund.id).where(*_refunds_made_in(start, end), Refund.applied_at > finished).limit(1)
        if db.session.execute(applied_since).first() is not None:
            days.add(bill_date)
    expected = (
        select(ReconciliationRun.bill_date, Refund)
        .join(ReconciliationMismatch, ReconciliationMismatch.run_id == ReconciliationRun.id)
        .join(Refund, Refund.out_refund_no == ReconciliationMismatch.subject_ref)
        .where(
            ReconciliationRun.kind == BillKind.TRADE,
            ReconciliationRun.status == RunStatus.DONE,
            ReconciliationRun.bill_date >= since.isoformat(),
            ReconciliationRun.bill_date < yesterday.isoformat(),
            ReconciliationMismatch.subject_type == SubjectType.REFUND,
            ReconciliationMismatch.kind == MISSING_THERE,
            ReconciliationMismatch.resolved_at.is_(None),
        )
    )
    for bill_date, refund in db.session.execute(expected).tuples():
        if request_day(refund).isoformat() != bill_date:
            days.add(bill_date)
    return days


def request_day(refund: Refund) -> date:
    """The Beijing day whose trade bill lists ``refund`` as reconciliation expects it (``_refunds_made_in``):
    WeChat's time of its request when known, else the earlier of our record of it and its finish."""
    asked = refund.requested_at
    if asked is None:
        finished = refund.finished_at
        asked = finished if finished is not None and finished < refund.created_at else refund.created_at
    return beijing(asked).date()


def reconciled_long_ago(refund: Refund, now: datetime) -> date | None:
    """The request day of a refund applied ``now`` when that day's trade bill was reconciled already and the next
    daily job may no longer reconcile it again by itself (``CATCH_UP_DAYS`` before yesterday, counted from the next
    job's yesterday: today's); None otherwise."""
    day = request_day(refund)
    if day >= beijing(now).date() - timedelta(days=CATCH_UP_DAYS):
        return None
    done = select(ReconciliationRun.id).where(
        ReconciliationRun.bill_date == day.isoformat(),
        ReconciliationRun.kind == BillKind.TRADE,
        ReconciliationRun.status == RunStatus.DONE,
    )
    return day if db.session.execute(done.limit(1)).first() is not None else None


def bill_day(bill_date: date | str, now: datetime) -> date:
    """The finished Beijing day a bill covers (today's bill is not out yet)."""
    day = date.fromisoformat(bill_date) if isinstance(bill_date, str) else bill_date
    if day >= beijing(now).date():
        raise ValueError(f"the bill for {day} is not out yet: bills cover finished Beijing days")
    return day


def sub_merchants_to_reconcile(day: date) -> list[str]:
    """Service-provider mode: the sub-merchants whose trade bill the day needs, in order.

    Every merchant's sub-merchant number, not only those with orders paid here that day: a payment we never
    saw (a lost notification) or an order we lack shows only in its sub-merchant's bill, and a quiet
    sub-merchant costs one request answered NO_STATEMENT_EXIST. Plus the numbers on the day's paid orders
    and refunds (``_refunds_made_in``; an order keeps the sub-merchant it was paid to when its merchant's number
    changes), and those the day's runs already read (a rerun covers at least the same bills).
    """
    start, end = _day_window(day)
    refunded = select(Order.sub_mchid).join(Refund, Refund.order_id == Order.id)
    queries = (
        select(Merchant.sub_mchid),
        select(Order.sub_mchid).where(Order.paid_at >= start, Order.paid_at < end),
        refunded.where(*_refunds_made_in(start, end)),
        select(ReconciliationRun.sub_mchid).where(ReconciliationRun.bill_date == day.isoformat()),
    )
    found = set().union(*(db.session.execute(q.distinct()).scalars() for q in queries))
    return sorted(found - {None, OURS})


def start_runs(day: date, now: datetime, sub_mchids: list[str] | tuple[str, ...] = (OURS,)) -> None:
    """The day's trade runs (ours, or one per sub-merchant) and fund-flow run, (re)marked ``running``."""
    for sub_mchid in sub_mchids:
        _run_for(day, BillKind.TRADE, sub_mchid, now, restart=True)
    _run_for(day, BillKind.FUNDFLOW, OURS, now, restart=True)


def fetch_bills(
    pay_client: PayClient,
    day: date,
    *,
    sub_mchids: list[str] | tuple[str, ...] = (OURS,),
    account_type: str = "BASIC",
    tar_type: str | None = "GZIP",
    number_prefix: str | None = None,
) -> list[BillOutcome]:
    """The trade bills (ours, or each sub-merchant's) and the fund-flow bill, downloaded and parsed (no database
    access).

    ``tar_type="GZIP"`` asks for compressed files (the SHA-1 covers the decompressed content). ``number_prefix``:
    the environment prefix of our payout numbers (``MoneySettings.number_prefix``), passed in by the shell; when
    it is not, a fund-flow line's number is ours when it has no prefix or names one of our payouts.
    """
    bill_date = day.isoformat()

    def trade(sub_mchid: str) -> Callable[[], Any]:
        # SubMerchant checks the number's form: a bad one fails its run (WeChatInvalidRequest) unasked
        return lambda: pay_client.trade_bill(
            bill_date, "ALL", tar_type, sub=SubMerchant(sub_mchid) if sub_mchid else None
        )

    mchid = pay_client.config.mchid  # each trade line's 商户号 (a service provider's own number in partner mode)
    outcomes = [
        _fetch(BillKind.TRADE, trade(sub_mchid), pay_client, sub_mchid, mchid=mchid) for sub_mchid in sub_mchids
    ]
    fund = _fetch(
        BillKind.FUNDFLOW,
        lambda: pay_client.fundflow_bill(bill_date, account_type, tar_type),
        pay_client,
        number_prefix=number_prefix,
    )
    return [*outcomes, fund]


def check_ledger_and_alert(point_value_fen: int) -> CheckReport:
    """The ledger's invariants, points valued at ``point_value_fen`` (``POINT_VALUE_FEN``, as ``flask ledger check``:
    at a fen a point, 5 points owed back as 1 yuan passed here and failed there); an alert lists the first
    violations, once while the same one is open (every jobs node runs the daily check: N nodes had paged N times a
    day for one finding)."""
    report = check_ledger(point_value_fen)
    if not report.ok:
        listed = "; ".join(report.violations[:ALERT_LISTED])
        alert_once("ledger_check_failed", "ledger", f"{len(report.violations)} violations: {listed}")
    return report


# -- fetching and parsing (no transaction open) --------------------------------------------------


def _fetch(
    kind: BillKind,
    apply: Callable[[], Any],
    pay_client: PayClient,
    sub_mchid: str = OURS,
    *,
    mchid: str | None = None,
    number_prefix: str | None = None,
) -> BillOutcome:
    """One bill, fetched and parsed; any failure is this bill's run's error (the other bills are fetched still)."""
    outcome = BillOutcome(kind, sub_mchid, mchid=mchid, number_prefix=number_prefix)
    try:
        url, hash_value, hash_type = bill_answer(apply())
        outcome.hash_value = hash_value[:64]
        content = pay_client.download_bill(url, hash_value, hash_type)
        if kind == BillKind.TRADE:
            outcome.lines = read_trade_lines(content)
        else:
            outcome.lines = read_fund_lines(content, number_prefix)
    except WeChatError as exc:
        if exc.code != NO_BILL:
            outcome.error = _clean(f"{exc.code}: {exc.message}")
    except ValueError as exc:  # BillFormatError, bad UTF-8
        outcome.error = _clean(f"bill unreadable: {exc}")
    except Exception as exc:  # anything else: this bill's run fails with its alert, never the day's job
        log.exception("reconciliation: fetching the %s bill failed", kind)
        outcome.error = _clean(f"bill unreadable ({type(exc).__name__}): {exc}")
    if outcome.error is not None:
        outcome.lines = []
    return outcome


def read_trade_lines(content: bytes) -> list[TradeLine]:
    """A trade bill's lines, checked against its summary. Read a line at a time, each row dropped once its line is
    kept: a busy day's bill is never held again as text, lines or rows (``python -m bench bills``)."""
    reader, totals, lines = BillReader(content, TRADE_SUMMARY_COLUMNS), TradeTotals(), []
    for n, row in reader:
        lines.append(trade_line(row, n))
        totals.add(row, n)
    totals.check(reader.summary, reader.summary_line_no)
    return lines


def read_fund_lines(content: bytes, number_prefix: str | None = None) -> list[FundLine]:
    """A fund-flow bill's lines, checked against its summary, read as ``read_trade_lines`` reads."""
    reader = BillReader(content, FUND_SUMMARY_COLUMNS)
    lines = [fund_line(row, n, number_prefix) for n, row in reader]
    check_fund_summary(lines, reader.summary)
    return lines


# -- matching (pure: bill lines and our rows in, findings out) ------------------------------------


def match_trade(
    lines: list[TradeLine],
    orders: dict[str, Order],
    refunds: dict[str, Refund],
    window,
    payee: str = OURS,
    mchid: str | None = None,
    refund_payees: dict[str, str | None] | None = None,
) -> Matching:
    """Payment rows match our orders by 商户订单号, REFUND rows our refunds by 商户退款单号 (amounts in fen:
    申请退款金额 against the refund's, its 退款状态 against ours); a row we lack, or a row of ``window`` the bill
    lacks, is a finding. ``window``: (out_trade_nos paid that day, out_refund_nos begun that day and succeeded);
    ``payee``: the sub-merchant whose bill it is (service-provider mode), which each paid order must name.

    ``mchid``: our merchant number. A row naming another (商户号, or a 特约商户号 other than the bill's: ``payee``,
    or "0" on our own bill) is no payment or refund of ours whatever its number: it matches nothing and is a
    finding of its own, ``<number>@<merchant>`` (WeChat lists money of a merchant we are not in our bill).

    ``refund_payees``: the sub-merchant each refund's order names (service-provider mode), which a refund row in
    ``payee``'s bill must name too, as a payment row must (WeChat made it from that sub-merchant's money)."""
    m, paid, refunded, foreign = Matching(), defaultdict(list), defaultdict(list), defaultdict(list)
    for line in lines:
        stranger = _stranger(line, mchid, payee)
        if stranger is not None:
            subject = SubjectType.REFUND if line.state == "REFUND" else SubjectType.ORDER
            number = line.out_refund_no if line.state == "REFUND" else line.out_trade_no
            foreign[(subject, f"{number}@{stranger[0]}")].append((line, stranger[1]))
        elif line.state == "REFUND":
            refunded[line.out_refund_no].append(line)
        else:  # SUCCESS, or a state we do not expect (judged below)
            paid[line.out_trade_no].append(line)
    for ref, group in paid.items():
        order = orders.get(ref)
        m.judge(SubjectType.ORDER, ref, _order_verdict(group, order) or _payee_verdict(group, order, payee))
    for ref, group in refunded.items():
        refund = refunds.get(ref)
        m.judge(
            SubjectType.REFUND,
            ref,
            _refund_verdict(group, refund) or _refund_payee_verdict(group, refund, payee, refund_payees or {}),
        )
    for (subject, ref), group in foreign.items():
        line, why = group[0]
        amount = sum(x.refund_fen if x.state == "REFUND" else x.total_fen for x, _ in group)
        m.judge(subject, ref, (MISSING_HERE, None, amount, f"line {line.line_no}: {why}" + _times(group)))
    for ref in sorted(window[0] - paid.keys()):
        m.judge(SubjectType.ORDER, ref, (MISSING_THERE, orders[ref].payable_fen, None, "paid here, not in the bill"))
    for ref in sorted(window[1] - refunded.keys()):
        m.judge(SubjectType.REFUND, ref, (MISSING_THERE, refunds[ref].amount_fen, None, "not in the bill"))
    return m


def _stranger(line: TradeLine, mchid: str | None, payee: str) -> tuple[str, str] | None:
    """(the other merchant's number, why) when the line is not of the bill's merchant; None when it is."""
    if mchid is not None and line.mchid != mchid:
        return line.mchid or "-", f"商户号 {line.mchid or '-'} is not ours ({mchid})"
    if line.sub_mchid is None or (line.sub_mchid == payee if payee != OURS else line.sub_mchid in NO_SUB):
        return None
    return line.sub_mchid, f"特约商户号 {line.sub_mchid} is not this bill's ({payee or 'none: our own bill'})"


def _times(group: list) -> str:
    return f" (listed {len(group)} times)" if len(group) > 1 else ""


def _order_verdict(group: list[TradeLine], order: Order | None) -> Verdict:
    total, settled = sum(x.total_fen for x in group), sum(x.settled_fen for x in group)
    odd = [x for x in group if x.state != "SUCCESS"]
    if odd:
        return (
            STATUS_DIFFERS,
            order.payable_fen if order else None,
            total,
            f"line {odd[0].line_no}: 交易状态 {odd[0].state}",
        )
    if order is None:
        return MISSING_HERE, None, total, "WeChat lists a paid order we lack" + _times(group)
    if order.status not in (OrderStatus.PAID, OrderStatus.REFUNDED) and not order.paid_after_close:
        return STATUS_DIFFERS, order.payable_fen, total, f"WeChat says paid, our order is {order.status}"
    if total != order.payable_fen:
        return AMOUNT_DIFFERS, order.payable_fen, total, "订单金额 vs our payable" + _times(group)
    booked = order.payable_fen - order.unsettled_coupon_fen  # a 充值型 coupon's part included, a 免充值 one's not
    if settled != booked:
        return AMOUNT_DIFFERS, booked, settled, "应结订单金额 vs what our books say WeChat settled"
    return None


def _payee_verdict(group: list[TradeLine], order: Order, payee: str) -> Verdict:
    if payee == OURS or order.sub_mchid == payee:
        return None
    theirs = sum(x.total_fen for x in group)
    return (
        STATUS_DIFFERS,
        order.payable_fen,
        theirs,
        f"paid to sub-merchant {payee}, ours names {order.sub_mchid or 'none'}",
    )


def _refund_verdict(group: list[TradeLine], refund: Refund | None) -> Verdict:
    amount, state = sum(x.refund_fen for x in group), group[-1].refund_state
    if refund is None:
        return MISSING_HERE, None, amount, "WeChat lists a refund we lack" + _times(group)
    if amount != refund.amount_fen:
        return AMOUNT_DIFFERS, refund.amount_fen, amount, "申请退款金额 vs our refund" + _times(group)
    # The bill freezes a refund's state when it is made; PROCESSING there counts as done.
    ours_done = refund.status == RefundStatus.SUCCEEDED
    if (state in WECHAT_REFUND_DONE) != ours_done and (state, refund.status) != ("PROCESSING", "pending"):
        return STATUS_DIFFERS, refund.amount_fen, amount, f"WeChat says {state or '-'}, our refund is {refund.status}"
    return None


def _refund_payee_verdict(
    group: list[TradeLine], refund: Refund | None, payee: str, payees: dict[str, str | None]
) -> Verdict:
    if payee == OURS or refund is None or payees.get(refund.out_refund_no, payee) == payee:
        return None
    ours = payees[refund.out_refund_no]
    amount = sum(x.refund_fen for x in group)
    return STATUS_DIFFERS, refund.amount_fen, amount, f"refunded by sub-merchant {payee}, ours names {ours or 'none'}"


def match_fundflow(
    lines: list[FundLine], payouts: dict[str, Payout], window: set[str], returned: set[str] = frozenset()
) -> Matching:
    """``window``: external numbers of our fund-moving payouts that succeeded that day; ``returned``: of those whose
    money WeChat gave back that day (``Payout.returned_at``), each an income line of the bill (subject
    ``<number>:returned``). ``payouts``: ours by external number, every one a line names among them."""
    m, groups, returns = Matching(), defaultdict(list), defaultdict(list)
    for line in lines:
        if line.is_payout:
            groups[line.our_no or f"wx:{line.wechat_no}"].append(line)
        elif line.is_return:
            returns[line.our_no or f"wx:{line.wechat_no}"].append(line)
    for ref, group in groups.items():
        m.judge(SubjectType.PAYOUT, ref, _payout_verdict(group, payouts.get(ref)))
    for ref in sorted(window - groups.keys()):
        m.judge(SubjectType.PAYOUT, ref, (MISSING_THERE, payouts[ref].amount_fen, None, "not in the bill"))
    for ref, group in returns.items():
        m.judge(SubjectType.PAYOUT, ref + RETURNED, _return_verdict(group, payouts.get(ref)))
    for ref in sorted(returned - returns.keys()):
        why = "we gave it back to the person's balance as WeChat's refund; the bill lists no such refund"
        m.judge(SubjectType.PAYOUT, ref + RETURNED, (MISSING_THERE, payouts[ref].amount_fen, None, why))
    return m


def _payout_verdict(group: list[FundLine], payout: Payout | None) -> Verdict:
    amount, first = sum(x.amount_fen for x in group), group[0]
    if payout is None:
        return MISSING_HERE, None, amount, f"WeChat paid out ({first.business} {first.wechat_no}); no payout of ours"
    if payout.status != PayoutStatus.SUCCEEDED:
        return STATUS_DIFFERS, payout.amount_fen, amount, f"WeChat paid it out, our payout is {payout.status}"
    if amount != payout.amount_fen:
        return AMOUNT_DIFFERS, payout.amount_fen, amount, "收支金额 vs our payout" + _times(group)
    return None


def _return_verdict(group: list[FundLine], payout: Payout | None) -> Verdict:
    amount, first = sum(x.amount_fen for x in group), group[0]
    if payout is None:
        why = f"WeChat gave money back ({first.business} {first.wechat_no}); no payout of ours"
        return MISSING_HERE, None, amount, why
    if payout.status in NEVER_PAID:  # the money came back for a payout our books never counted as paid out
        if amount != payout.amount_fen:
            return AMOUNT_DIFFERS, payout.amount_fen, amount, f"收支金额 vs our {payout.status} payout" + _times(group)
        return None
    if payout.status != PayoutStatus.SUCCEEDED:  # not final here yet (WeChat closed it first): a check will tell
        return STATUS_DIFFERS, None, amount, f"WeChat gave this payout's money back; our payout is {payout.status}"
    if payout.returned_at is None:
        why = "WeChat gave this payout's money back; we count it as paid out (no claim check has found the refund yet)"
        return STATUS_DIFFERS, None, amount, why
    if amount != payout.amount_fen:
        return AMOUNT_DIFFERS, payout.amount_fen, amount, "收支金额 vs what we gave back" + _times(group)
    return None


# -- writing (one transaction) --------------------------------------------------------------------


def _run_for(day: date, kind: BillKind, sub_mchid: str, now: datetime, restart: bool = False) -> ReconciliationRun:
    bill_date = day.isoformat()
    where = (
        ReconciliationRun.bill_date == bill_date,
        ReconciliationRun.kind == kind,
        ReconciliationRun.sub_mchid == sub_mchid,
    )
    run = db.session.execute(select(ReconciliationRun).where(*where).with_for_update()).scalar_one_or_none()
    if run is None:  # made once whoever comes first (a hand `flask jobs reconcile` beside the 10:30 job had failed
        # on the other's row), then locked as found
        row = {
            "bill_date": bill_date,
            "kind": str(kind),
            "sub_mchid": sub_mchid,
            "status": RunStatus.RUNNING.value,
            "started_at": now,
            **dict.fromkeys(("lines_read", "matched", "mismatches"), 0),
        }
        insert_ignoring(ReconciliationRun.__table__, [row], ("bill_date", "kind", "sub_mchid"))
        run = db.session.execute(
            select(ReconciliationRun).where(*where).with_for_update().execution_options(populate_existing=True)
        ).scalar_one()
    if restart:
        run.status, run.started_at, run.finished_at, run.error = RunStatus.RUNNING, now, None, None
    db.session.flush()
    return run


def write_results(day: date, outcomes: list[BillOutcome], now: datetime) -> list[ReconciliationRun]:
    """Every outcome's run, its findings and one alert; flushed, not committed.

    When that fails (say the database refuses a row), what was written is rolled back and, in a fresh
    transaction, every run of ``outcomes`` is marked failed with its alert: a day's runs never stay ``running``.
    A unique-key race with another node writing the same rows first is written once more on top of theirs."""
    try:
        return _write_all(day, outcomes, now)
    except IntegrityError:  # another node wrote the same rows first: once more, on top of theirs
        db.session.rollback()
        try:
            return _write_all(day, outcomes, now)
        except Exception as exc:  # any failure fails the runs, below
            failure: Exception = exc
    except Exception as exc:  # any failure fails the runs, below
        failure = exc
    log.error("reconciliation: writing the results of %s failed", day, exc_info=failure)
    db.session.rollback()
    error = _clean(f"the results could not be written ({type(failure).__name__}); nothing of this run was kept")
    runs = []
    for outcome in outcomes:
        run = _run_for(day, outcome.kind, outcome.sub_mchid, now)
        run.hash_value, run.finished_at = outcome.hash_value, now
        _fail_run(run, error)
        runs.append(run)
    db.session.flush()
    return runs


def _write_all(day: date, outcomes: list[BillOutcome], now: datetime) -> list[ReconciliationRun]:
    runs, found = [], []
    for outcome in outcomes:
        run = _run_for(day, outcome.kind, outcome.sub_mchid, now)
        run.hash_value, run.finished_at = outcome.hash_value, now
        if outcome.error is None:
            matching = _match(day, outcome)
            found += _save_findings(run, matching.findings, now)
            run.status, run.error, run.lines_read = RunStatus.DONE, None, len(outcome.lines)
            run.matched, run.mismatches = matching.matched, len(matching.findings)
        else:
            _fail_run(run, outcome.error)
        runs.append(run)
    if found:
        counts = Counter(f"{f.kind} {f.subject_type}" for f in found)
        summary = "; ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        listed = ", ".join(f"{f.kind} {f.subject_type} {f.subject_ref}" for f in found[:ALERT_LISTED])
        # the findings still open only (resolved ones found again page nobody), once while the same alert is open
        # (a rerun, a catch-up, a second node)
        alert_once(
            "reconciliation_mismatch", f"bills {day}", f"{len(found)} mismatches on {day}: {summary}. First: {listed}"
        )
    db.session.flush()  # a row the database refuses is refused here, where write_results can fail the runs
    return runs


def _fail_run(run: ReconciliationRun, error: str) -> None:
    # This attempt read nothing, so it says nothing new about the day: the findings of the last bill read stay
    # (an open one is still the operators' to work through, even when WeChat can no longer give the bill, say a
    # day older than the three months it keeps), and ``mismatches`` counts the open ones left.
    error = _clean(error)
    run.status, run.error, run.lines_read, run.matched = RunStatus.FAILED, error, 0, 0
    still_open = (ReconciliationMismatch.run_id == run.id, ReconciliationMismatch.resolved_at.is_(None))
    run.mismatches = db.session.execute(select(func.count(ReconciliationMismatch.id)).where(*still_open)).scalar_one()
    subject = f"{run.kind} bill {run.bill_date}" + (f" of sub-merchant {run.sub_mchid}" if run.sub_mchid else "")
    alert_once("reconciliation_failed", subject, f"{subject}: {error}")


def _day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, BEIJING).astimezone(UTC)
    return start, start + timedelta(days=1)


def _match(day: date, outcome: BillOutcome) -> Matching:
    start, end = _day_window(day)
    if outcome.kind == BillKind.TRADE:
        paid_q = select(Order).where(Order.paid_at >= start, Order.paid_at < end)
        done_q = select(Refund).where(*_refunds_made_in(start, end))
        if outcome.sub_mchid != OURS:  # one sub-merchant's bill: the orders paid to it, and their refunds
            paid_q = paid_q.where(Order.sub_mchid == outcome.sub_mchid)
            done_q = done_q.join(Order, Order.id == Refund.order_id).where(Order.sub_mchid == outcome.sub_mchid)
        paid, done = _rows(paid_q), _rows(done_q)
        orders = _by_ref(Order.out_trade_no, {x.out_trade_no for x in outcome.lines}, paid)
        refunds = _by_ref(Refund.out_refund_no, {x.out_refund_no for x in outcome.lines if x.out_refund_no}, done)
        window = ({o.out_trade_no for o in paid}, {r.out_refund_no for r in done})
        payees = _refund_payees(set(refunds)) if outcome.sub_mchid != OURS else None
        matching = match_trade(outcome.lines, orders, refunds, window, outcome.sub_mchid, outcome.mchid, payees)
        _note_request_times(outcome, refunds)
        return matching
    rails = [rail.value for rail in FUND_RAILS]
    left = (Payout.status == PayoutStatus.SUCCEEDED, Payout.rail.in_(rails), Payout.finished_at >= start)
    sent = _rows(select(Payout).where(*left, Payout.finished_at < end))
    back = _rows(select(Payout).where(Payout.returned_at >= start, Payout.returned_at < end))
    lines = outcome.lines
    if outcome.number_prefix is None:  # not told our prefix: a prefixed number is ours when it names our payout
        unsure = {no for x in lines if x.our_no is None for no in x.numbers}
        known = _by_ref(Payout.external_no, unsure, [])
        lines = [x if x.our_no else replace(x, our_no=next((n for n in x.numbers if n in known), None)) for x in lines]
    payouts = _by_ref(Payout.external_no, {x.our_no for x in lines if x.our_no}, sent + back)
    return match_fundflow(lines, payouts, {p.external_no for p in sent}, {p.external_no for p in back})


CLOCKS_APART = timedelta(hours=1)  # WeChat's clock and ours, at most (only widens an index scan: no finding)


def _refunds_made_in(start: datetime, end: datetime) -> tuple:
    """The refunds a day's trade bill must list: those that succeeded, asked of WeChat that day. WeChat lists a
    refund on the day it took the request, in the state it had then (PROCESSING counts as done), so a refund asked
    for before midnight and finished after it (or days later, to a bank card) is on the first day's bill, not the
    second's; one recorded here before midnight and sent after it (the refund job sends a late payment's refund, or
    one WeChat never received) on the second's.

    That day is WeChat's own time of the request (``Refund.requested_at``: its create_time, or the time of the
    refund's row in a bill that listed it) when we know it; else the earlier of our record of the refund and WeChat's
    success time (a refund begun on the merchant platform is recorded here when WeChat tells of it, after midnight
    perhaps, though asked and finished before). ``finished_at >= start - CLOCKS_APART`` adds nothing (it finished
    after it was asked for) but lets its index narrow the scan."""
    asked = func.coalesce(
        Refund.requested_at,
        case((Refund.finished_at < Refund.created_at, Refund.finished_at), else_=Refund.created_at),
    )
    return (
        Refund.status == RefundStatus.SUCCEEDED,
        Refund.finished_at >= start - CLOCKS_APART,
        asked >= start,
        asked < end,
    )


def _note_request_times(outcome: BillOutcome, refunds: dict[str, Refund]) -> None:
    """Each refund of ours a REFUND row of this bill names (not another merchant's row) gets the row's time as WeChat's
    time of its request (``Refund.requested_at``): the day whose bill lists it, so no other day's run expects it
    (``_refunds_made_in``). Written with the run's results; a row already saying so is left alone."""
    for line in outcome.lines:
        if line.state != "REFUND" or line.at is None or _stranger(line, outcome.mchid, outcome.sub_mchid):
            continue
        refund = refunds.get(line.out_refund_no)
        if refund is not None and refund.requested_at != line.at:
            refund.requested_at = line.at


def _refund_payees(refs: set[str]) -> dict[str, str | None]:
    """The sub-merchant each refund's order was paid to, by out_refund_no."""
    wanted, found = sorted(refs), {}
    query = select(Refund.out_refund_no, Order.sub_mchid).join(Order, Order.id == Refund.order_id)
    for i in range(0, len(wanted), IN_CHUNK):
        chunk = query.where(Refund.out_refund_no.in_(wanted[i : i + IN_CHUNK]))
        found.update(db.session.execute(chunk).tuples().all())
    return found


def _rows(query) -> list:
    return list(db.session.execute(query).scalars())


def _by_ref(column, refs: set[str], known: list) -> dict[str, Any]:
    """Our rows by their reference: the day's rows, plus any other row a bill line names."""
    name, model = column.key, column.class_
    found = {getattr(row, name): row for row in known}
    wanted = sorted(refs - found.keys())
    for i in range(0, len(wanted), IN_CHUNK):
        found.update((getattr(r, name), r) for r in _rows(select(model).where(column.in_(wanted[i : i + IN_CHUNK]))))
    return found


def _save_findings(run: ReconciliationRun, findings: list[Finding], now: datetime) -> list[Finding]:
    """Upsert by subject: an unchanged finding keeps its resolution; a gone, unresolved one is dropped. Returns the
    findings still open (an operator's resolution of an unchanged one stands)."""
    # Locked and read fresh: an operator resolving one of them meanwhile is kept (not dropped as gone).
    rows = _rows(
        select(ReconciliationMismatch)
        .where(ReconciliationMismatch.run_id == run.id)
        .order_by(ReconciliationMismatch.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    existing = {(m.subject_type, m.subject_ref): m for m in rows}
    still_open = []
    for f in findings:
        row = existing.pop((f.subject_type, f.subject_ref), None)
        if row is None:
            row = ReconciliationMismatch(run_id=run.id, subject_type=f.subject_type, subject_ref=f.subject_ref)
            db.session.add(row)
        elif (row.kind, row.ours_fen, row.theirs_fen) == (f.kind, f.ours_fen, f.theirs_fen):
            row.detail = f.detail
            if row.resolved_at is None:
                still_open.append(f)
            continue
        else:  # a different finding about the same subject: open again
            row.resolved_at = row.resolved_by = row.resolution = None
        row.kind, row.ours_fen, row.theirs_fen, row.detail = f.kind, f.ours_fen, f.theirs_fen, f.detail
        row.found_at = now
        still_open.append(f)
        log.warning(
            "reconciliation mismatch", extra={"mismatch": f.kind, "subject": f"{f.subject_type} {f.subject_ref}"}
        )
    for row in existing.values():
        if row.resolved_at is None:
            db.session.delete(row)
    db.session.flush()
    return still_open


class ReconciliationError(Exception):
    """An operator's request about a mismatch that cannot be done (``kind`` maps to the HTTP status)."""

    def __init__(self, message: str, code: str, kind: str):
        super().__init__(message)
        self.code, self.kind = code, kind


def resolve_mismatch(mismatch_id: int, operator_id: int, resolution: str, now: datetime) -> ReconciliationMismatch:
    """An operator closes a mismatch with what they found and did (once: a resolved one stays as it was).

    The row is locked and read fresh, so two operators resolving at once cannot both succeed. Flushes only;
    the caller audits and commits."""
    stmt = select(ReconciliationMismatch).where(ReconciliationMismatch.id == mismatch_id)
    row = db.session.execute(stmt.with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
    if row is None:
        raise ReconciliationError(f"no reconciliation mismatch {mismatch_id}", "not_found", "not_found")
    if row.resolved_at is not None:
        raise ReconciliationError(
            f"mismatch {mismatch_id} was already resolved by operator {row.resolved_by}: {row.resolution}",
            "already_resolved",
            "conflict",
        )
    row.resolved_at, row.resolved_by, row.resolution = now, operator_id, resolution
    db.session.flush()
    return row
