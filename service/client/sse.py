"""Server-sent events (text/event-stream) read line by line, for Tollgate.events()."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerEvent:
    event: str
    id: str | None
    data: str


@dataclass
class EventParser:
    """Feed it lines without their line break; a blank line completes an event."""

    _event: str = ""
    _id: str | None = None
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            done = ServerEvent(self._event or "message", self._id, "\n".join(self._data))
            self._event, self._data = "", []
            return done
        if line.startswith(":"):
            return None  # a comment: a keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None
