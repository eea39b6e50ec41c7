"""The mTLS channel: the gateway knows a caller only by its client certificate (in production
a SITHS function certificate), so every channel carries one."""

from __future__ import annotations

import os
from typing import Union

import grpc

# PEM text/bytes, or the path of a PEM file.
Pem = Union[str, bytes, "os.PathLike[str]"]


def _read_pem(pem: Pem) -> bytes:
    if isinstance(pem, bytes):
        return pem
    if isinstance(pem, str) and pem.lstrip().startswith("-----BEGIN"):
        return pem.encode()
    with open(pem, "rb") as f:
        return f.read()


def connect(
    address: str,
    ca_pem: Pem,
    cert_pem: Pem,
    key_pem: Pem,
    server_name: str | None = None,
) -> grpc.Channel:
    """A secure channel to `address` (`host:port`) that trusts only `ca_pem` and presents the
    client certificate `cert_pem` with its private key `key_pem` (PEM text or file paths).

    `server_name` overrides the name checked against the server certificate, for when the
    address is an IP or an alias that the certificate does not name.
    """
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca_pem),
        private_key=_read_pem(key_pem),
        certificate_chain=_read_pem(cert_pem),
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)
