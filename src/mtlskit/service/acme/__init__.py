"""ACME (RFC 8555) for the CA service: ``routes.routes(state)``, mounted at ``/acme``.

::

    /acme/directory            GET       the resource URLs and meta
    /acme/new-nonce            HEAD/GET  a Replay-Nonce
    /acme/new-account          POST      jwk: create or find an account
    /acme/acct/{id}            POST      kid: read, update contact, deactivate
    /acme/acct/{id}/orders     POST      kid: the account's orders
    /acme/key-change           POST      kid: roll the account key over
    /acme/new-order            POST      kid: dns and ip identifiers
    /acme/order/{id}           POST      kid: read (POST-as-GET)
    /acme/order/{id}/finalize  POST      kid: a CSR for the order's names
    /acme/authz/{id}           POST      kid: read, deactivate
    /acme/chall/{id}           POST      kid: {} starts http-01 / tls-alpn-01 validation
    /acme/cert/{id}            POST      kid: the PEM chain
    /acme/revoke-cert          POST      kid of the ordering account, or jwk of the certificate

Every response carries a fresh ``Replay-Nonce``; every refusal is an RFC 7807
problem document with an ACME error type. The state lives in the CA's database
(:mod:`mtlskit.service.acme.store`), so replicas sharing PostgreSQL serve one
ACME server: a nonce or an order made on one is good on the other.
"""

from mtlskit.service.acme.problems import AcmeProblem

# The routes live in mtlskit.service.acme.routes (routes(state) -> list[BaseRoute]),
# which the app mounts at /acme.
__all__ = ["AcmeProblem"]
