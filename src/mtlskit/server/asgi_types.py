"""The types of an ASGI 3 application (the asgiref specification), in a module of their own.

The host (server/asgi.py) and :class:`~mtlskit.server.config.ServerConfig`, whose
``app`` may be one, both use them; this module imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "ClientDisconnected", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away (the ASGI spec asks for an
    OSError subclass)."""
