"""Client mode: plain TCP in, mTLS out (to be written)."""

from __future__ import annotations

from mtlskit.proxy.config import ClientProxyConfig

__all__ = ["run_client"]


def run_client(config: ClientProxyConfig) -> None:
    raise NotImplementedError
