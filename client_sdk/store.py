"""Where a reader keeps `{broker, channel, read_token, last_event_id}` so that a process started
again after a crash or a restart rejoins the channel and shows the rest (`attach(store=...)`).

The position saved is that of the last event the application finished handling (the reader
saves when the application asks for the next one), so a restart repeats at most the event that
was being handled when the process died, and never skips one. A channel that ended, failed or was
cancelled is forgotten: there is nothing left to resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, TypedDict


class SavedChannel(TypedDict):
    broker: list[str]  # the broker URLs the reader was given (or the token's)
    channel: str
    read_token: str
    last_event_id: str | None


class ChannelStore(Protocol):
    """Any object with these three methods can persist a reader's position."""

    def load(self) -> SavedChannel | None: ...

    def save(self, state: SavedChannel) -> None: ...

    def clear(self) -> None: ...


class FileStore:
    """One channel's position in a JSON file, replaced atomically on every save (a crash mid-
    write leaves the previous position, never half a file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> SavedChannel | None:
        try:
            raw: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a saved channel ({exc})") from exc
        if not _is_saved(raw):
            raise ValueError(f"{self.path}: not a saved channel (unexpected content)")
        return raw  # type: ignore[no-any-return]

    def save(self, state: SavedChannel) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(state, file)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"


class MemoryStore:
    """A store in memory (tests, or an application that persists the dict itself)."""

    def __init__(self, state: SavedChannel | None = None) -> None:
        self.state = state

    def load(self) -> SavedChannel | None:
        return self.state

    def save(self, state: SavedChannel) -> None:
        self.state = state

    def clear(self) -> None:
        self.state = None


def as_store(store: ChannelStore | str | os.PathLike[str] | None) -> ChannelStore | None:
    """A path means a FileStore there; anything else must have load/save/clear."""
    if store is None:
        return None
    if isinstance(store, str | os.PathLike):
        return FileStore(store)
    if not all(callable(getattr(store, name, None)) for name in ("load", "save", "clear")):
        raise TypeError(f"store must be a path or have load/save/clear methods, got {store!r}")
    return store


def _is_saved(raw: Any) -> bool:
    return (
        isinstance(raw, dict)
        and isinstance(raw.get("broker"), list)
        and all(isinstance(url, str) for url in raw["broker"])
        and isinstance(raw.get("channel"), str)
        and isinstance(raw.get("read_token"), str)
        and (raw.get("last_event_id") is None or isinstance(raw.get("last_event_id"), str))
    )
