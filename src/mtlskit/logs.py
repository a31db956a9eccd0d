"""mtlskit's log lines: Go's log package format on stderr, as the seed's server prints.

::

    2021/12/05 23:36:03 listen on https://localhost:8443
    2021/12/05 23:38:58 new request GET / from CN=client

Every part logs to the ``mtlskit`` logger (``mtlskit.server``, ``mtlskit.service`` …).
The command line sets this format up; :func:`mtlskit.server.run` does too when the
calling program has not configured logging itself (then Python would print nothing
below WARNING: no ``listen on`` line, no request lines).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["log_to_stderr"]

FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%Y/%m/%d %H:%M:%S"


def log_to_stderr(*, unless_configured: bool = False) -> bool:
    """Send the ``mtlskit`` logger's INFO lines to stderr in the seed's format.

    With ``unless_configured``, leave logging alone when the program has set it up (a
    handler on the root or the ``mtlskit`` logger). True when this set it up.
    """
    logger = logging.getLogger("mtlskit")
    if unless_configured and (logger.handlers or logging.getLogger().handlers):
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return True
