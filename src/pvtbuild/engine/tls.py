"""TLS between this client and a dask scheduler: certificates for a local cluster when dask config requires
encryption, the client's certificates checked before connecting, and a failed connection explained.

The client's certificates come from dask's own config (`distributed.comm.tls.*`, or the
`DASK_DISTRIBUTED__COMM__TLS__*` environment variables), nothing pvtbuild-specific; see docs/cluster.md.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

from pvtbuild.engine.tasks import one_line
from pvtbuild.errors import PvtbuildError

# dask config keys of this client's TLS settings (and their environment variables, DASK_ + the key in
# capitals with __ for each dot and _ for each dash)
TLS_KEYS = {"ca_file": "distributed.comm.tls.ca-file", "client_cert": "distributed.comm.tls.client.cert",
            "client_key": "distributed.comm.tls.client.key"}
_TLS_HOW = ("set distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and distributed.comm.tls.client.key "
            "in dask config (e.g. ~/.config/dask/distributed.yaml) or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY "
            "(see docs/cluster.md)")


def local_security() -> Any:
    """None (dask config as it is) or, where dask config requires encryption but names no scheduler
    certificate, temporary certificates for the local cluster (dask makes them with `cryptography`)."""
    from distributed.security import Security  # noqa: PLC0415  (distributed takes ~0.7 s to import; sync runs skip it)

    security = Security()
    if not security.require_encryption or security.tls_scheduler_cert:
        return None
    try:
        return Security.temporary()
    except ImportError:
        raise PvtbuildError("dask config requires encryption (distributed.comm.require-encryption): a local cluster "
                            "then needs `pip install cryptography` to make its temporary certificates; or require "
                            "it only for runs with --scheduler tls://...") from None


def check_client_tls(address: str, security: Any) -> None:
    """One line instead of dask's TypeError or a nameless FileNotFoundError: what of the client's TLS is missing."""
    missing = [TLS_KEYS[name] for name in ("ca_file", "client_cert") if not getattr(security, f"tls_{name}")]
    if missing:
        what = "CA certificate" if missing == [TLS_KEYS["ca_file"]] else "client certificate"
        raise PvtbuildError(f"TLS scheduler {address}: no {what} configured ({' and '.join(missing)} unset); "
                            f"{_TLS_HOW}")
    for name, key in TLS_KEYS.items():
        value = getattr(security, f"tls_{name}")
        if value and "\n" not in value and not os.path.isfile(value):  # a value with newlines is the PEM itself
            raise PvtbuildError(f"TLS scheduler {address}: {key} is {value}, which is not a file")
    try:
        security.get_connection_args("client")
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: a key that does not fit its certificate, ...
        raise PvtbuildError(f"TLS scheduler {address}: cannot use this client's certificates "
                            f"({', '.join(TLS_KEYS.values())}): {one_line(e)}") from None


def connect_failure(address: str, exc: BaseException) -> str:
    """Why a connection to a listening scheduler failed, in one line: TLS on one side only, or a certificate."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    reason = one_line(exc)
    # probed only after a refusal: a ClientHello makes a plain dask scheduler log an error
    if url.scheme == "tcp" and not isinstance(exc, TimeoutError) and _speaks_tls(url.hostname, url.port):
        return (f"dask scheduler {address} speaks TLS: connect with tls://{url.netloc}, "
                f"with this client's certificates in dask config; {_TLS_HOW}")
    if url.scheme == "tls":
        if not _speaks_tls(url.hostname, url.port):  # not by the reason's words: "cannot convert to SSL" is either
            return f"dask scheduler {address} does not speak TLS: connect with tcp://{url.netloc} ({reason})"
        return (f"TLS scheduler {address} and this client do not accept each other's certificates "
                f"(the scheduler's must be signed by {TLS_KEYS['ca_file']}, this client's "
                f"{TLS_KEYS['client_cert']} by the CA the scheduler trusts): {reason}")
    return f"cannot connect to dask scheduler {address}: {reason}"


def _speaks_tls(host: str | None, port: int | None, timeout: float = 3.0) -> bool:
    """Whether a TLS handshake (no certificate checks) gets an answer in TLS from host:port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw):
            return True
    except ssl.SSLError as e:  # an alert (no client certificate, ...) is TLS too; WRONG_VERSION_NUMBER is not
        return "alert" in str(e).lower()
    except OSError:
        return False
