"""The rebate engine's operations: campaigns issue packets, orders spend them, payments pay both sides.

Owns: packet issuance and claims, orders, the payment and refund intakes
(``apply_payment``, ``apply_refund_notice``: what WeChat said, compared once), the awarding of
rebates (ledger + outbox), refunds with clawback, and campaign budgets; the
campaign lifecycle operators drive (``campaign_ops``, scoped by ``scope``) and
the claims people make (``claims``, under the claim limits of ``risk``).
Settings and the acting operator are passed in, never read from the request.
``rules.py`` is the pure core (facts in, decisions out); everything else here
applies decisions inside the caller's transaction and never commits.

Lock order, everywhere: order row, then packet, then campaigns by ascending id
(budgets). Keeping one order rules out deadlocks between payments and refunds.
"""

from rebate.errors import RebateError
from rebate.intake import PayAccount, PaymentOutcome, RefundOutcome
from rebate.orders import close_order, create_order
from rebate.packets import claim_packet, issue_packet
from rebate.payments import apply_payment
from rebate.refunds import apply_refund, apply_refund_notice, begin_refund, fail_refund
from rebate.share_debts import share_came_back  # registered: what a share that came back does to its rebate

__all__ = [
    "PayAccount",
    "PaymentOutcome",
    "RebateError",
    "RefundOutcome",
    "apply_payment",
    "apply_refund",
    "apply_refund_notice",
    "share_came_back",
    "begin_refund",
    "claim_packet",
    "close_order",
    "create_order",
    "fail_refund",
    "issue_packet",
]
