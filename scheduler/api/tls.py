"""TLS files checked before the daemon starts: each mistake is one line naming the file.

gRPC's own errors for a bad certificate or key are a traceback ending in "Failed to bind
to address", which blames the port. Here the files are read and loaded by Python's ssl
module first, so a missing file, a file that is not PEM, a certificate and key given the
wrong way round, an encrypted key or a key that does not belong to the certificate each
get a message that says which it is.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

CERT = b"-----BEGIN CERTIFICATE-----"
KEY = b"PRIVATE KEY-----"


class TlsError(ValueError):
    pass


def read(path: str, flag: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise TlsError(f"{flag} {path}: no such file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise TlsError(f"{flag} {path}: cannot read it ({e.strerror})") from e


def server_credentials(cert: str, key: str) -> grpc.ServerCredentials | None:
    """Credentials for --tls-cert/--tls-key, None for plaintext; TlsError says what is
    wrong with which file."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise TlsError("TLS needs both --tls-cert and --tls-key")
    cert_pem, key_pem = read(cert, "--tls-cert"), read(key, "--tls-key")
    if CERT not in cert_pem:
        if KEY in cert_pem:
            raise TlsError(
                f"--tls-cert {cert} holds a private key, not a certificate "
                "(are --tls-cert and --tls-key swapped?)"
            )
        raise TlsError(f"--tls-cert {cert}: not a PEM certificate")
    if KEY not in key_pem:
        if CERT in key_pem:
            raise TlsError(
                f"--tls-key {key} holds a certificate, not a private key "
                "(are --tls-cert and --tls-key swapped?)"
            )
        raise TlsError(f"--tls-key {key}: not a PEM private key")
    if b"ENCRYPTED" in key_pem:
        raise TlsError(f"--tls-key {key}: the key is encrypted; the server needs it unencrypted")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or e.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"--tls-key {key} does not belong to the certificate in --tls-cert {cert}"
            ) from e
        raise TlsError(
            f"--tls-cert {cert} / --tls-key {key}: not a valid certificate and key "
            f"({e.reason or e})"
        ) from e
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])
