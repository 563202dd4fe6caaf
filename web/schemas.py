"""Shared request-model building blocks (pydantic v2, strict about types)."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

from models.text import shown_text
from money import MAX_FEN
from web.guards import MAX_ID, day_in_range, instant_in_range


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def shown_line(min_length: int, max_length: int):
    """A field of one line people read, stripped: no control, line-breaking or direction-changing characters, and
    something visible (models.text.shown_text), ``min_length`` to ``max_length`` characters."""
    return Annotated[
        str,
        StringConstraints(min_length=min_length, max_length=max_length, strip_whitespace=True),
        AfterValidator(shown_text),
    ]


# a merchant's, product's, campaign's or audience's name: one line people read (operators, the person's notices, the
# rules page)
Name = shown_line(1, 64)
# an operator's username or display name: their invisible characters are refused by models.operators, with a code
# naming the field (username_invisible), as its other rules for names (mixed scripts, lookalikes)
OperatorName = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Category = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[\w\-]+$")]
# an operator's reason (a ban, a review, a payout, a pause, a deposit): one line shown in the console and the audit
# log and exported to reports, so one line of visible text as a name is (models.text.shown_text); the console asks
# for it in a one-line field. A store that keeps fewer characters cuts it (web.billing_api).
Reason = shown_line(3, 500)
PositiveFen = Annotated[StrictInt, Field(gt=0, le=MAX_FEN)]
NonNegativeFen = Annotated[StrictInt, Field(ge=0, le=MAX_FEN)]
Bps = Annotated[StrictInt, Field(ge=0, le=100_000)]
Id = Annotated[StrictInt, Field(gt=0, le=MAX_ID)]  # every primary key is a 32-bit INTEGER
Flag = StrictBool
NUMBER = re.compile(r"\s*[-+]?[0-9]+(\.[0-9]*)?\s*")


def written_out(value):
    """An instant or a day from outside as a date written out: pydantic would take a number (``2000000000``, or its
    digits in a string, as a query string sends them) as Unix seconds, or milliseconds when it is large, guessing the
    unit by its size: a value the document (``format: date-time`` / ``date``) does not allow, read as a moment nobody
    wrote."""
    if isinstance(value, int | float) or (isinstance(value, str) and NUMBER.fullmatch(value)):
        raise ValueError("must be a date written out (YYYY-MM-DD, with a time and offset for an instant), not a number")
    return value


# with its offset; 2000 to 2099 (web.guards)
Instant = Annotated[AwareDatetime, BeforeValidator(written_out), AfterValidator(instant_in_range)]
Day = Annotated[date, BeforeValidator(written_out), AfterValidator(day_in_range)]  # YYYY-MM-DD, 2000 to 2099


class Page(Model):
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10_000_000)
