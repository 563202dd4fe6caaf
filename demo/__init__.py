"""``make demo``: the README's walkthrough, played by a program against a running server.

It is a client like the mini-program: it speaks HTTP to the app (``requests``
and the standard library, nothing of ours imported), so it runs the same
against ``make run`` and against gunicorn + ``flask jobs run`` + PostgreSQL.
Two things it cannot do over HTTP it asks the ``flask`` command in the same
environment: ``flask seed-demo`` for an operator token (which makes the claim
codes) and ``flask ledger check`` at the end.

Invariants: every run uses fresh people (``alice-<run id>``), so it can be run
again and again; every asynchronous step (the payment callback, the
dispatcher's transfer, the transfer callback) is polled with a timeout until
it has landed, never read once; any failure ends the run with a non-zero exit
and the server's own ``error`` / ``message``.
"""
