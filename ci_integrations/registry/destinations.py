"""Where the client may connect, and where a registry's credentials may go.

A destination guard is a callable `guard(scheme, host, port)` that raises DestinationRefused to refuse a connection.
The caller puts one in `RegistrySpec.guard`; the transport asks it before every request it sends for that registry:
the first one, every redirect hop (storage hosts included) and every token request. `address_guard` builds the usual
one, refusing internal addresses, so a registry cannot point the worker at cloud metadata or the internal network.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import DestinationRefused, cut

Guard = Callable[[str, str, int], None]
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: lower case, host without IPv6 brackets, the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: matches no registry and reaches nothing
        port = -1
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def same_origin(url: str, registry_url: str) -> bool:
    """Whether `url` is on the registry's own scheme, host and port: the only place its credentials may be sent.

    Not a storage host a blob redirects to, not another host taking uploads, and not the registry's own host over
    plain HTTP when the registry is HTTPS.
    """
    return origin(url) == origin(registry_url)


def check_destination(guard: Guard | None, url: str) -> None:
    """Ask `guard` (if any) whether the client may connect to `url`; it raises DestinationRefused if not."""
    if guard is not None:
        guard(*origin(url))


def check_realm(realm: str, registry_url: str) -> None:
    """A Bearer realm must be https, or on the registry's own scheme and host (any port: a plain-HTTP local registry
    with its own token service). The token request carries the registry's credentials, so nowhere else."""
    scheme, host, _ = origin(realm)
    own_scheme, own_host, _ = origin(registry_url)
    if scheme == "https" or (scheme == own_scheme and host == own_host):
        return
    raise DestinationRefused(
        f"refused the token realm on {cut(host, 200) or 'no host'} ({cut(scheme, 20) or 'no'} scheme): a realm must be"
        f" https or on the registry's own host {own_host}"
    )


def _key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _internal_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of internal address this is ("loopback", "link-local", …), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    for kind in ("loopback", "unspecified", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:  # e.g. 100.64.0.0/10, where some clouds keep their metadata service
        return "non-global"
    return None


@dataclass(frozen=True)
class AddressGuard:
    """Refuses a host if any address it resolves to is internal (loopback, link-local such as 169.254.169.254,
    private such as 10/8 or fd00:ec2::254, unspecified, multicast, reserved), unless its host:port is allowed.

    Equal for equal allowed sets, so clients built for equal specs are still shared.
    """

    allowed: frozenset[str]

    def __call__(self, scheme: str, host: str, port: int) -> None:
        if scheme not in DEFAULT_PORTS:
            raise DestinationRefused(f"refused to connect to {cut(host, 200)}: {cut(scheme, 20)!r} is not http(s)")
        if _key(host, port) in self.allowed:
            return
        # An unresolvable host raises socket.gaierror: the connection would fail the same way, and is retried so.
        for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            address = ipaddress.ip_address(sockaddr[0])
            kind = _internal_kind(address)
            if kind is not None:
                raise DestinationRefused(
                    f"refused to connect to {_key(cut(host, 200), port)}: it resolves to {address}, a {kind} address"
                )


def address_guard(allowed_private_hosts: Iterable[str] = ()) -> AddressGuard:
    """A guard refusing internal addresses except the given "host:port" entries (the portal's own registries, which
    may live on loopback or a private network; "[::1]:5000" for IPv6)."""
    allowed = set()
    for entry in allowed_private_hosts:
        parts = urlsplit(f"//{entry.strip()}")
        if not parts.hostname or parts.port is None:
            raise ValueError(f"allowed host {entry!r} must be host:port")
        allowed.add(_key(parts.hostname.lower(), parts.port))
    return AddressGuard(frozenset(allowed))
