"""What the ``selfexplain`` parser needs while it parses, and nothing heavier (no torch): the
program's name, the argument types, the has-changed threshold rules, and the defaults (with
their docs) that the command shares with the pipeline's settings (``core.settings``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from selfexplain.core.settings import Section

PROG = "selfexplain"
THRESHOLD_RULES = ("rank", "natural", "balanced")


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def positive_or_all(value: str) -> int | None:
    """A positive integer, or "all" (None: no limit)."""
    if value == "all":
        return None
    try:
        return positive(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or all, got {value}"
        ) from None


def fraction(value: str) -> float:
    x = float(value)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return x


def threshold_rule(value: str) -> str:
    if value in THRESHOLD_RULES:
        return value
    try:
        float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(THRESHOLD_RULES)} or a number, got {value!r}"
        ) from None
    return value


def setting_doc(section: type[Section], name: str) -> str:
    """The one-line doc of a settings field (``metadata["doc"]``)."""
    (field,) = [f for f in dataclasses.fields(section) if f.name == name]
    return field.metadata["doc"]


def from_setting(section: type[Section], name: str, none: str = "null") -> dict[str, Any]:
    """``default`` and ``help`` of an option that is the pipeline's setting ``section.name``: its
    default and its doc (``none``: how the command line writes a None default)."""
    default = getattr(section(), name)
    shown = none if default is None else default
    doc = setting_doc(section, name).replace("%", "%%")
    return {"default": default, "help": f"{doc} (default {shown}: {section.SECTION}.{name})"}
