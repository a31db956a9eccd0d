"""The types of an ASGI 3 application (the asgiref specification), in a module of their own.

The host (server/asgi.py) and :class:`~mtlskit.server.config.ServerConfig`, whose
``app`` may be one, both use them; this module imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header_pair",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away (the ASGI spec asks for an
    OSError subclass)."""


def header_pair(item: object) -> tuple[bytes | bytearray, bytes | bytearray]:
    """One ``(name, value)`` of the headers an app sent; ValueError saying what is wrong
    (the http and websocket hosts make it the app's error)."""
    try:
        name, value = cast(tuple[object, object], item)
    except (TypeError, ValueError):
        raise ValueError("the headers must be (name, value) pairs") from None
    if not isinstance(name, bytes | bytearray) or not isinstance(value, bytes | bytearray):
        raise ValueError("header names and values must be bytes")
    return name, value
