"""Probe 19: risk and insights — rule sets, reports, rollups, their APIs and jobs. Both databases."""

from __future__ import annotations

from datetime import UTC, date, datetime

from models import db
from models.base import BEIJING
from risk.rules import decide, forget_rules, rules_for
from tests.test_risk_backtest import BACKTEST, plant  # noqa: F401 (a fixture)
from tests.test_risk_rules import RULES, activate, create


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


def test_an_active_empty_platform_rule_set_decides_with_no_rules_not_the_defaults(client, make_operator, plant):  # noqa: F811
    """An admin who activates an empty platform rule set (no rules: every order allowed) sees it listed as the active
    rules (``defaults`` false, ``rules`` []), and the backtest of that very draft said it changes a score-95 block
    to an allow. But the payments read an empty set as no set (``sets.get(...) or default_rules()``): they kept
    blocking at 90 and reviewing at 60, and the backtest compared against the defaults while saying it did not."""
    _, admin = make_operator("admin")
    order = plant(95, seconds_from_first_view=5)
    empty = create(client, admin, [])
    assert empty.status_code == 201
    assert activate(client, admin, empty.json["id"]).status_code == 200
    listed = client.get(RULES, headers=admin).json
    assert (listed["defaults"], listed["rules"]) == (False, [])
    forget_rules()
    try:
        verdict = decide(rules_for([])[None], {"score": 95})
    finally:
        forget_rules()
    assert verdict.action == "allow"
    replay = client.post(BACKTEST, json={"rule_set_id": empty.json["id"]}, headers=admin).json
    assert replay["active"]["defaults"] is False
    assert replay["active"]["allow"] == replay["draft"]["allow"] == 1, (order, replay)
    db.session.rollback()


def test_a_late_days_rebuild_that_fails_is_tried_again_on_the_next_run(
    make_merchant, make_product, make_user, pay, time_machine, monkeypatch
):
    """The job rebuilds a final day again when a payment WeChat dated there is recorded late (``late_days``: the
    ledger entries since its previous run). A day whose rebuild fails is "tried again next run" (the job's words);
    a final day was not: the next run looked for late entries only since the run that failed, so once the rebuild
    of that day had failed for longer than ``LATE_MARGIN`` the payment was never counted on its day."""
    import jobs.insights as job
    from insights.reports import overview
    from models import utcnow
    from rebate import create_order
    from rebate.orders import LineRequest

    shop, buyer = make_merchant(), make_user()
    product = make_product(shop, price_fen=80_00)
    time_machine.move_to(bj(2026, 3, 5, 9, 55), tick=False)
    order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
    db.session.commit()
    for day in range(5, 10):  # the job runs every day meanwhile: 5 March is final from 8 March on
        time_machine.move_to(bj(2026, 3, day, 12), tick=False)
        job.insights_rollup_job()
    # when: on 10 March the payment WeChat dates 10:00 on 5 March is recorded (a notification found by a query)
    time_machine.move_to(bj(2026, 3, 10, 9), tick=False)
    assert pay(order, at=bj(2026, 3, 5, 10)) == "applied"
    real = job.roll_up_day

    def fails_on_the_5th(day):
        if day == date(2026, 3, 5):
            raise RuntimeError("statement timeout")
        return real(day)

    # and the rebuild of 5 March fails on three runs (a lock timeout, a restart), then works again
    monkeypatch.setattr(job, "roll_up_day", fails_on_the_5th)
    for minute in (5, 10, 15):
        time_machine.move_to(bj(2026, 3, 10, 9, minute), tick=False)
        assert job.insights_rollup_job()["failed"] == 1
    monkeypatch.setattr(job, "roll_up_day", real)
    time_machine.move_to(bj(2026, 3, 10, 9, 20), tick=False)
    job.insights_rollup_job()
    # then: the sale is on 5 March, as a rebuild of that day puts it
    totals = overview(date(2026, 3, 5), date(2026, 3, 5), shop.id)["totals"]
    assert (totals["orders"], totals["sales_fen"]) == (1, 80_00)
