"""``flask operators …``, ``flask ledger check`` and ``flask seed-demo``; registers ``flask keys …`` and
``flask risk …`` of their own modules."""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from ledger import check_ledger
from models import Merchant, OperatorRole, db, unit_of_work

operators_cli = AppGroup("operators", help="Operator accounts.")
ledger_cli = AppGroup("ledger", help="Ledger checks.")


@operators_cli.command("create")
@click.option("--username", required=True)
@click.option("--display-name", default=None)
@click.option("--role", type=click.Choice([r.value for r in OperatorRole]), default=OperatorRole.ADMIN.value)
@click.option("--merchant-id", type=int, default=None)
def create_operator_command(username: str, display_name: str | None, role: str, merchant_id: int | None) -> None:
    """Create an operator (the first admin, say) and print their personal token once."""
    from models.operators import OperatorError, create_operator_record
    from web.auth import issue_operator_token
    from web.errors import ApiError

    if (role == OperatorRole.MERCHANT_STAFF) != (merchant_id is not None):
        raise click.UsageError("--merchant-id is required for merchant_staff and forbidden otherwise")
    if merchant_id is not None and db.session.get(Merchant, merchant_id) is None:
        raise click.ClickException(f"merchant {merchant_id} not found")
    try:
        with unit_of_work():
            operator = create_operator_record(username, display_name or username, role, merchant_id)
            token = issue_operator_token(operator, label="cli")
            _audit_from_shell("operator.create", operator, "created from the command line")
    except (ApiError, OperatorError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"operator {username} ({role}) created; token (shown once):")
    click.echo(token)


@operators_cli.command("confirm")
@click.option("--username", required=True)
@click.option("--reason", required=True, help="Why (audited): who checked that the account is the person's.")
def confirm_operator_command(username: str, reason: str) -> None:
    """Confirm an admin or finance account an admin made (shell access is trusted): for a platform with one admin,
    whose accounts no second admin can confirm. With two admins, the second confirms it in the API instead."""
    from models import Operator, utcnow
    from models.operators import username_key

    with unit_of_work():
        operator = db.session.execute(
            db.select(Operator).where(Operator.username_key == username_key(username)).with_for_update()
        ).scalar_one_or_none()
        if operator is None:
            raise click.ClickException(f"no operator {username!r}")
        if operator.confirmed_at is not None:
            raise click.ClickException(f"operator {operator.username} is confirmed already")
        operator.confirmed_at = utcnow()
        _audit_from_shell("operator.confirm", operator, f"confirmed from the command line: {reason}")
    click.echo(f"operator {operator.username} ({operator.role}) confirmed")


def _audit_from_shell(action: str, operator, reason: str) -> None:
    """An audit line of the command line (no operator: shell access is trusted) about ``operator``."""
    from models import AuditLog

    db.session.add(
        AuditLog(
            operator_id=None,
            action=action,
            target_type="operator",
            target_id=str(operator.id),
            reason=reason,
            details={"role": operator.role},
        )
    )


@ledger_cli.command("check")
def ledger_check_command() -> None:
    """Verify every entry balances and finished clearing flows are back to zero."""
    report = check_ledger(current_app.config["POINT_VALUE_FEN"])
    for line in report.in_flight:
        click.echo(f"in flight: {line}")
    for line in report.violations:
        click.echo(f"VIOLATION: {line}", err=True)
    click.echo(
        f"{report.entries_checked} entries checked, {len(report.violations)} violations, "
        f"{len(report.in_flight)} flows in flight"
    )
    if not report.ok:
        sys.exit(1)


@ledger_cli.command("rebuild-marks")
def ledger_rebuild_marks_command() -> None:
    """Forget every balance mark: balances are read from all postings until the job folds them again (minutes)."""
    from ledger.marks import forget_marks

    forgotten = forget_marks()
    db.session.commit()
    click.echo(f"{forgotten} balance marks forgotten; the job fold_ledger_marks folds them again from posting 1")


def register_cli(app: Flask) -> None:
    from web.demo import seed_demo_command
    from web.keys_cli import keys_cli
    from web.risk_cli import risk_cli

    app.cli.add_command(operators_cli)
    app.cli.add_command(ledger_cli)
    app.cli.add_command(seed_demo_command)
    app.cli.add_command(risk_cli)
    app.cli.add_command(keys_cli)
