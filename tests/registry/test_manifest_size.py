"""Manifests over 4 MiB (the OCI guidance) are refused, naming the size, without being read into memory."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ci_integrations.registry import ProtocolError
from ci_integrations.registry.client import MAX_MANIFEST_BYTES, OCI_MANIFEST, Endpoint, RegistryClient
from ci_integrations.registry.transport import RetryPolicy
from tests.support.images import manifest_of_size

ENDLESS = 64 * 1024 * 1024  # what the "endless" manifest would send if the client kept reading


class ManifestServer:
    """A registry stand-in: /v2/<repo>/manifests/<ref> serves `at-limit` (exactly 4 MiB), `declared` (4 MiB + 1
    with a Content-Length) or `endless` (chunked, no length, 64 MiB unless the client stops reading)."""

    def __init__(self):
        self.sent = {"endless": 0}
        self.at_limit = manifest_of_size(MAX_MANIFEST_BYTES)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                repository = self.path.split("/")[2]
                if repository == "endless":
                    self.send_response(200)
                    self.send_header("Content-Type", OCI_MANIFEST)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"x" * 65536
                    try:
                        while server.sent["endless"] < ENDLESS:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            server.sent["endless"] += len(chunk)
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the client hung up, as it should
                    self.close_connection = True
                    return
                body = server.at_limit if repository == "at-limit" else server.at_limit + b" "
                self.send_response(200)
                self.send_header("Content-Type", OCI_MANIFEST)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def manifest_server():
    server = ManifestServer()
    yield server
    server.stop()


@pytest.fixture
def client(manifest_server):
    with RegistryClient(Endpoint(manifest_server.url), policy=RetryPolicy(attempts=1)) as made:
        yield made


def test_a_manifest_of_exactly_4_mib_is_accepted(client, manifest_server):
    manifest = client.get_manifest("at-limit", "v1")
    assert manifest.raw == manifest_server.at_limit and manifest.media_type == OCI_MANIFEST


def test_a_manifest_declared_larger_than_4_mib_is_refused_naming_its_size(client):
    with pytest.raises(ProtocolError, match=f"{MAX_MANIFEST_BYTES + 1} bytes, over the limit of 4194304 bytes"):
        client.get_manifest("declared", "v1")


def test_a_manifest_without_a_length_is_cut_off_at_the_limit_instead_of_read_whole(client, manifest_server):
    with pytest.raises(ProtocolError, match="more than 4194304 bytes"):
        client.get_manifest("endless", "v1")
    # The server could only push what the client read plus what the socket buffers hold, far from all of it.
    assert manifest_server.sent["endless"] < ENDLESS / 2
