"""The address of the client behind a request, for sign-in lockout and per-address rate limits.

X-Forwarded-For is only believed when the direct peer is one of `P2P_TRUSTED_PROXIES`: anyone else can write any
address into it. Each trusted proxy appends the address it received the request from, so walking the header from the
right, the first entry that is not itself a trusted proxy is the client. Entries further left were written by the
client (or by proxies we do not know) and are never used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def trusted_proxy_networks(text: str) -> list[Network]:
    """The networks in a comma-separated list of addresses and CIDR networks; ImproperlyConfigured names a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            # strict=False: "10.0.0.1/8" means the network 10.0.0.0/8, as people often write it.
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"P2P_TRUSTED_PROXIES holds {item!r}, which is not an IP address or CIDR network "
                "(expected e.g. 10.0.0.5,10.1.0.0/16,fd00::/8)."
            ) from None
    return networks


def _address(text: str) -> Address | None:
    """An address from one X-Forwarded-For or REMOTE_ADDR entry ("1.2.3.4", "1.2.3.4:5678", "[::1]:80"), or None."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [IPv6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # IPv4:port; a bare IPv6 address has several colons
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d; compare it as IPv4.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _is_trusted(address: Address, networks: Iterable[Network]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(request) -> str | None:
    """The client's address: REMOTE_ADDR, or, when that is a trusted proxy, the right-most untrusted
    X-Forwarded-For entry. Given as the callable django-axes asks for the address of a sign-in attempt."""
    peer_text = request.META.get("REMOTE_ADDR") or ""
    peer = _address(peer_text)
    networks = getattr(settings, "P2P_TRUSTED_PROXIES", [])
    if peer is None or not networks or not _is_trusted(peer, networks):
        return str(peer) if peer is not None else (peer_text or None)
    # Several X-Forwarded-For headers reach Django joined with commas, in the order they were sent.
    hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    nearest = peer
    for entry in reversed(hops):
        hop = _address(entry)
        if hop is None:
            # Not an address: a trusted proxy would have written one here, so this is the client's own text. The
            # nearest address we know is the one that handed it on.
            break
        nearest = hop
        if not _is_trusted(hop, networks):
            return str(hop)
    # Every entry was a trusted proxy (or there was none): the left-most proxy we trust is as close as we can get.
    return str(nearest)
