"""The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt, section 2.2).

Sent once, first, on each connection to the target (``--proxy-protocol``): the
client's address and port, the address it connected to, and a ``PP2_TYPE_SSL``
TLV saying the client presented a certificate that verified, with the TLS
version, the client certificate's CN and the cipher as sub-TLVs. HAProxy, nginx
(``listen … proxy_protocol``), Envoy and PostgreSQL poolers read it.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["SIGNATURE", "v2_header"]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_PROXY = 0x21  # version 2, command PROXY
_VERSION_LOCAL = 0x20  # version 2, command LOCAL (no address to tell)
_TCP4, _TCP6 = 0x11, 0x21

PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02  # a certificate was presented on this connection
PP2_CLIENT_CERT_SESS = 0x04  # … or for this TLS session (resumed)


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def _ssl_tlv(version: str | None, common_name: str | None, cipher: str | None) -> bytes:
    # "client" bits, then "verify": 0 means the certificate verified (the handshake
    # refuses every other one), then the sub-TLVs.
    body = struct.pack("!BI", PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, 0)
    if version:
        body += _tlv(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii"))
    if common_name is not None:
        body += _tlv(PP2_SUBTYPE_SSL_CN, common_name.encode("utf-8"))
    if cipher:
        body += _tlv(PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii"))
    return _tlv(PP2_TYPE_SSL, body)


def v2_header(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    tls_version: str | None,
    common_name: str | None,
    cipher: str | None,
) -> bytes:
    """The header for one connection from ``source`` to ``destination`` (IP, port)."""
    tlvs = _ssl_tlv(tls_version, common_name, cipher)
    addresses = b""
    command = _VERSION_LOCAL
    family = 0x00  # AF_UNSPEC
    if source is not None and destination is not None:
        src = ipaddress.ip_address(source[0].split("%")[0])
        dst = ipaddress.ip_address(destination[0].split("%")[0])
        if src.version != dst.version:  # an IPv4 client on a dual-stack socket
            src, dst = _as_v6(src), _as_v6(dst)
        family = _TCP4 if src.version == 4 else _TCP6
        addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
        command = _VERSION_PROXY
    payload = addresses + tlvs
    return SIGNATURE + struct.pack("!BBH", command, family, len(payload)) + payload


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address("::ffff:" + str(ip))
