"""Webhook targets: the events a job may send, the URL check, and Standard Webhooks signing.

A URL is checked when the job is created and again on every attempt, on the address it
resolves to then; the request goes to that checked address (Host header and TLS server name
set from the URL), so a DNS answer that changes after the check cannot point it elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.errors import WebhookUrlNotAllowed

EVENTS = ("started", "progress", "completed")
SECRET_BYTES = 24
RESOLVE_TIMEOUT_S = 5.0

# IPv6 ranges whose addresses carry an IPv4 address that a gateway on the way may reach:
# IPv4-compatible (::a.b.c.d), NAT64 (RFC 6052, RFC 8215), 6to4 and Teredo. Refused even
# where private targets are allowed: a receiver never needs them, and on a NAT64 network they
# lead to internal and metadata addresses.
EMBEDDED_IPV4_NETWORKS = tuple(ipaddress.IPv6Network(net) for net in (
    "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32"))


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of '{id}.{timestamp}.{body}', keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip == ipaddress.IPv6Address("::1"):
            pass  # loopback, decided below like 127.0.0.1
        elif any(ip in network for network in EMBEDDED_IPV4_NETWORKS):
            return False
    if ip.is_multicast or ip.is_unspecified:
        return False
    return allow_private or ip.is_global


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL a webhook may go to; WebhookUrlNotAllowed otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlNotAllowed(f"{url!r} is not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlNotAllowed("the webhook URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise WebhookUrlNotAllowed("the webhook URL must not carry credentials")
    try:  # a name the resolver cannot encode ('a..b', a label over 63 characters)
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise WebhookUrlNotAllowed(f"the webhook host {parts.hostname!r} is not a valid "
                                   "host name") from exc
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_allowed(url: str, allow_private: bool) -> str:
    """The first address the URL's host resolves to, if every address is allowed."""
    _, host, port = split_url(url)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise WebhookUrlNotAllowed(f"the webhook host {host!r} does not resolve") from exc
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if not addresses or refused:
        raise WebhookUrlNotAllowed(
            f"the webhook host {host!r} resolves to a private, loopback or link-local address",
            addresses=refused)
    return addresses[0]


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL naming the checked address, headers, extensions): the connection goes to
    `address`; Host and the TLS server name still say the URL's host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip_host = f"[{address}]" if ":" in address else address
    netloc = ip_host + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"host": host_header}, extensions
