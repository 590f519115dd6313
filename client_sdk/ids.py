"""Event ids: `<ms>-<seq>` strings that are compared numerically, never as text."""

from __future__ import annotations

import re

# ASCII digits, anchored with \Z: `\d` matches other scripts' digits, `$` a final newline.
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})\Z")


def parse_event_id(value: str) -> tuple[int, int]:
    """Split an id into a sortable `(ms, seq)` tuple; ValueError when malformed."""
    match = _EVENT_ID.match(value)
    if match is None:
        raise ValueError(f"not an event id: {value!r} (expected <ms>-<seq>, e.g. 1732500000000-0)")
    return int(match.group(1)), int(match.group(2))


def is_event_id(value: str) -> bool:
    return _EVENT_ID.match(value) is not None


def is_after(candidate: str, last: str | None) -> bool:
    """True when `candidate` comes strictly after `last` (anything comes after None).

    Text comparison would be wrong: "999-0" sorts after "1000-0" as text.
    """
    if last is None:
        return True
    return parse_event_id(candidate) > parse_event_id(last)
