"""The behaviour trail's intake: ``POST /api/v1/events``, a batch of the mini-program's events.

Every event is checked before anything is stored (kinds, each kind's fields, sizes, active products);
one bad event refuses the whole batch with 422 naming the event and the field. The server stamps the
time: the batch's latest event is at the receive time, and the others are placed before it by their
``client_at`` offsets, at most 30 minutes back (``risk.trail.place``). The rate per person and per
device (``RISK_EVENTS_PER_MINUTE``) is counted in the same transaction, so a refused batch (429 +
``Retry-After``) leaves nothing. The person's device and network address are noted for risk
(``risk.identifiers``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, current_app
from pydantic import AwareDatetime, BeforeValidator, Field, StrictInt, StringConstraints, model_validator

from models import utcnow
from risk import identifiers, trail
from web.api import client_ip, endpoint
from web.auth import current_user
from web.errors import ValidationFailed
from web.growth_api import device_id
from web.schemas import Id, Model, written_out

bp = Blueprint("events", __name__, url_prefix="/api/v1")

NEEDS_PRODUCT = ("view", "compare", "cart_add", "cart_remove")
# Refused above this; stored truncated to trail.DETAIL_CHARS. No control characters.
Text = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


class EventIn(Model):
    kind: Literal["view", "search", "compare", "cart_add", "cart_remove", "page", "share"]
    product_id: Id | None = None
    query: Text | None = None
    path: Text | None = None
    dwell_ms: Annotated[StrictInt, Field(ge=0, le=3_600_000)] | None = None
    # When the app saw it: only its offset from the batch's latest client_at counts (risk.trail.place). Any year: a
    # phone's clock may be reset (1970). Written out, never a number: pydantic would read one as Unix seconds or
    # milliseconds by its size, and offsets in a guessed unit would misplace the batch's events.
    client_at: Annotated[AwareDatetime, BeforeValidator(written_out)] | None = None

    @model_validator(mode="after")
    def fields_of_the_kind(self):
        if self.kind in NEEDS_PRODUCT and self.product_id is None:
            raise ValueError(f"product_id is required for {self.kind}")
        if (self.kind == "search") != (self.query is not None):
            raise ValueError("query is required for search" if self.kind == "search" else "query is only for search")
        if (self.kind == "page") != (self.path is not None):
            raise ValueError("path is required for page" if self.kind == "page" else "path is only for page")
        return self


class Events(Model):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=trail.MAX_BATCH)]


class Accepted(Model):
    accepted: int


@endpoint(bp, "/events", methods=["POST"], body=Events, status=202, response=Accepted)
def post_events(body: Events):
    """Record a batch (1-100) of behaviour-trail events: views, searches, compares, cart changes, pages, shares."""
    user, device, now = current_user(), device_id(), utcnow()
    wanted = {e.product_id for e in body.events if e.product_id is not None}
    missing = trail.inactive_products(wanted)
    if missing:
        bad = [
            {"field": f"events.{i}.product_id", "problem": f"no such product: {e.product_id}"}
            for i, e in enumerate(body.events)
            if e.product_id in missing
        ]
        raise ValidationFailed(f"{bad[0]['field']}: {bad[0]['problem']}", code="unknown_product", details=bad)
    events = [
        (trail.Event(trail.KINDS[e.kind], e.product_id, e.query or e.path, e.dwell_ms), e.client_at)
        for e in body.events
    ]
    stored = trail.record(user.id, device, events, now, per_minute=current_app.config["RISK_EVENTS_PER_MINUTE"])
    identifiers.note(identifiers.USER, user.id, device, client_ip(), now)
    return {"accepted": stored}, 202
