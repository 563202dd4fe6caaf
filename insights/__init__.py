"""Read-only analysis: the customer-service trace and the what-if replay of draft rules.

Owns: ``trace`` (why an order or a red packet got, or did not get, each
rebate), ``trace_people`` (the same for a person), ``simulate`` (a draft
rule set replayed over past paid orders, in memory), and ``campaign_rules`` (a campaign's public rules in
words: who organises and funds it, what each side gets, the budget left coarsely; ``/c/<id>``).

Invariant: read-only, never writes, never commits. Nothing here adds, changes
or deletes a row, posts a ledger entry or enqueues a payout; it reads what the
engine in ``rebate`` decided and, for the what-if, evaluates ``rebate.rules``
in memory. ``tests/test_insights_read_only.py`` watches every statement a
trace and a replay send to the database.
"""
