"""Where a provider may point: the rule every way of setting a base URL goes through (the
admin, the API, ``manage.py addprovider``).

The gateway sends the organisation's provider credential to the base URL, so a URL is an
instruction to hand that secret to whoever listens there. It must be https, carry no
userinfo, and name a public target; loopback, private, link-local (cloud metadata at
169.254.169.254), shared, reserved and multicast targets, and the names that mean this host
(``localhost``, ``*.localhost``) or a metadata service, are refused unless
LLMPROXY_ALLOW_PRIVATE_UPSTREAMS is true (tests and self-hosted models on a private
network), which also lets those targets use plain http.

Host names are judged as written, not resolved: a public name whose DNS answer is private is
not caught here (docs/operations.md, "Provider URLs").
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
METADATA_NAMES = {"metadata", "metadata.google.internal", "instance-data", "metadata.azure.com"}


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host written as one means, in any of the forms a resolver takes
    (``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``[::ffff:127.0.0.1]``), or None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            # inet_aton accepts the short, decimal, octal and hex IPv4 forms getaddrinfo does.
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_private_host(host: str) -> bool:
    """Whether a host (as written in a URL) is this machine, a private network, a link-local
    or metadata address, or anything else that is not a public internet target."""
    host = host.rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost") or host in METADATA_NAMES:
        return True
    address = _address(host)
    if address is None:
        return host.endswith((".internal", ".local")) or "." not in host
    return not address.is_global or address.is_multicast


def check_base_url(url: str) -> str:
    """The base URL a provider may have (trailing slash dropped), or a ValidationError that
    says which part of the rule it breaks."""
    allow_private = settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValidationError("Not a valid URL.") from None
    if parts.scheme not in {"https", "http"} or not host:
        raise ValidationError("The base URL must be an https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "The base URL must not carry a user name or password: the credential is set apart."
        )
    if parts.query or parts.fragment:
        raise ValidationError("The base URL must not have a query or fragment.")
    private = is_private_host(host)
    if private and not allow_private:
        raise ValidationError(
            f"{host} is a loopback, private, link-local or metadata address: the provider "
            "credential would be sent there. Set LLMPROXY_ALLOW_PRIVATE_UPSTREAMS=true to "
            "allow such targets (self-hosted models, tests)."
        )
    if parts.scheme == "http" and not private:
        raise ValidationError(
            "The base URL must be https: the provider credential is sent with every request."
        )
    return url.strip().rstrip("/")
