"""HTTPS for the stand-ins: a throwaway local CA (``trustme``) and a TLS flavour of the server base.

azure-core refuses to send bearer tokens over ``http://``, so the App Configuration
and Key Vault stand-ins must speak HTTPS for the real SDKs to talk to them. The CA
exists only in memory and in two files in a temporary folder:

- ``ca_file``: the local CA alone (``connection_verify=``, ``curl --cacert``);
- ``ca_bundle``: certifi's public roots plus the local CA, for ``REQUESTS_CA_BUNDLE`` /
  ``SSL_CERT_FILE``, so a process trusting it still reaches real Azure endpoints.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .httpserver import Server

HANDSHAKE_TIMEOUT_SECONDS = 10.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class LocalCA:
    """A CA made for this process, and a server certificate for loopback names."""

    def __init__(self, names: Iterable[str] = LOOPBACK_NAMES) -> None:
        import trustme  # a dev dependency: never imported by the app

        self._ca = trustme.CA(organization_name="completions local stand-ins")
        self._cert = self._ca.issue_cert(*names)
        self._folder = Path(tempfile.mkdtemp(prefix="standins-ca-"))
        self.ca_file = str(self._folder / "ca.pem")
        self.ca_bundle = str(self._folder / "ca-bundle.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        Path(self.ca_bundle).write_bytes(_public_roots() + b"\n" + self._ca.cert_pem.bytes())

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        return context

    def cleanup(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def _public_roots() -> bytes:
    try:
        import certifi  # requests' dependency
    except ImportError:  # pragma: no cover - requests always brings it
        return b""
    return Path(certifi.where()).read_bytes()


class TLSServer(Server):
    """``Server`` over TLS. The handshake runs on the connection's own thread, so a
    client that connects and says nothing never holds up the accept loop."""

    def __init__(self, address: tuple[str, int], handler, *, context: ssl.SSLContext) -> None:
        self.ssl_context = context
        super().__init__(address, handler)

    @property
    def base_url(self) -> str:
        return f"https://{self.server_address[0]}:{self.port}"

    def get_request(self):
        sock, address = super().get_request()
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request, client_address):
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        request.do_handshake()  # a failed handshake raises: handle_error stays quiet, the connection closes
        super().finish_request(request, client_address)
