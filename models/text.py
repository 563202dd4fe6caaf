"""Text people read: one line of visible text (a name, a title, a template field). Shared by the layers that take
such text in (web's schemas, challenges' specs) and those that show it (notices' templates)."""

from __future__ import annotations

import unicodedata

# Marks that reorder what follows them (a name or a title "shown" to others as something else), and control, line,
# surrogate and private-use characters: text people read (a name, a title, a template field) is one line of
# visible text, as WeChat's "thing" field takes it.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
HIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Zl", "Zp"})
# Letters and symbols that draw nothing: the Hangul fillers and the blank braille pattern, what "invisible" names
# and titles are made of (alone they read as empty; between other characters they are the text's own).
BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def hidden(c: str) -> bool:
    """A character that changes how the line around it reads or breaks it, rather than showing itself."""
    return c in BIDI_CONTROLS or unicodedata.category(c) in HIDDEN_CATEGORIES


def shown_text(value: str) -> str:
    """One line people read (a validator: ``ValueError``): no control, line-breaking or direction-changing
    characters, and something visible (not only spaces, zero-width or format marks, or blank-looking letters such as
    the Hangul filler). An emoji joined with U+200D stays."""
    if any(hidden(c) for c in value):
        raise ValueError("control, line-breaking or text-direction characters are not allowed")
    if all(c.isspace() or c in BLANK_LOOKING or unicodedata.category(c) in ("Cf", "Mn", "Me") for c in value):
        raise ValueError("nothing visible")
    return value


def one_line(text: str) -> str:
    """``text`` as one line of visible text, for a field that shows it (stored before these rules, or from
    outside): each hidden character becomes a space, runs of spaces one."""
    return " ".join("".join(" " if hidden(c) else c for c in text).split())
