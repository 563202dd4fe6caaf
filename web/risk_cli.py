"""``flask risk …``: the seeded simulation (``flask risk simulate --seed N``)."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from web.progress import Steps, bar
from web.risk_simulation import SimConfig, population_size, report_lines, run

risk_cli = AppGroup("risk", help="Risk: the seeded simulation.")
DEFAULTS = SimConfig()


@risk_cli.command("simulate")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="The run's seed: same seed, same run.")
@click.option("--honest", type=click.IntRange(0), default=DEFAULTS.honest, show_default=True, help="Honest shoppers.")
@click.option(
    "--farm", type=click.IntRange(0), default=DEFAULTS.farm_accounts, show_default=True, help="Click-farm accounts."
)
@click.option(
    "--rings", type=click.IntRange(0), default=DEFAULTS.rings, show_default=True, help="Merchant-consumer rings."
)
@click.option("--ring-members", type=click.IntRange(1), default=DEFAULTS.ring_members, show_default=True)
@click.option(
    "--sybils", type=click.IntRange(0), default=DEFAULTS.sybils, show_default=True, help="Sybil registrations."
)
@click.option("--days", type=click.IntRange(1, 60), default=DEFAULTS.days, show_default=True, help="Simulated days.")
@click.option(
    "--database-url",
    default=None,
    help="PostgreSQL: the run gets a database of its own beside this one, dropped afterwards "
    "(default: a temporary SQLite file).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def simulate_command(seed, honest, farm, rings, ring_members, sybils, days, database_url, as_json) -> None:
    """Honest shoppers and planted fraud through the real API; precision and recall of the default rules.

    It runs on a throw-away database of its own (never this app's). The exit code is 0 whatever the
    figures: PASS / FAIL says whether the goals were met.
    """
    config = SimConfig(seed, honest, farm, rings, ring_members, sybils, days, database_url)
    create_app = current_app.extensions["app_factory"]  # a throw-away app of its own, not this one
    step = Steps("risk simulate")  # progress on stderr: stdout stays the table, or only the JSON document
    with bar(population_size(config), f"simulating (seed {seed})") as shown:
        result = run(config, create_app, shown.update, phase=step)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, sort_keys=True))
        return
    for line in report_lines(result):
        click.echo(line)
