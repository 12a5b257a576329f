"""The guard every outbound request of the platform goes through (webhooks today, alert
channels tomorrow): it decides which destinations may be reached and reaches them safely.

A URL is checked when it is saved and again at every send: https only (unless the
operator allows http), no credentials in it, and every address its host resolves to must
be public. Loopback, private, link-local, multicast, reserved, unspecified, shared and
cloud-metadata addresses are refused in every spelling: IPv6, IPv4-mapped IPv6, NAT64,
6to4, and the legacy IPv4 forms (``2130706433``, ``0x7f000001``, ``0177.1``). The send
then connects to the very address that was checked (the name is never resolved twice, so
DNS rebinding cannot swap it), keeps the name for the Host header and TLS (SNI and
certificate), checks the connected socket's peer address again before a byte is sent,
follows no redirect and ignores proxy environment variables. An operator may open
internal networks with ``MAESTRO_WEBHOOK_ALLOWED_NETWORKS``.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx

from maestro.errors import ValidationFailed

if TYPE_CHECKING:
    from maestro.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

NOT_ALLOWED = "This URL is not an allowed destination"
RESPONSE_READ_LIMIT = 64 * 1024  # bytes of a receiver's answer read at most
MAX_URL_LENGTH = 2000

# Refused whatever ``ipaddress`` says of them (its flags have been wrong before: CVE-2024-4032).
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, with the cloud metadata service at 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",  # unique local, with AWS's metadata service at fd00:ec2::254
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class DestinationRefused(ValidationFailed):
    """A URL the guard will not send to. Its message never says what the name resolved
    to, so the guard cannot be used to map internal networks."""

    def __init__(self, reason: str = NOT_ALLOWED, field: str = "url") -> None:
        super().__init__(reason, details=[(field, reason)])


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (``address``) and what to call it (``host``)."""

    url: str
    scheme: str
    host: str  # as written in the URL (a name or an address), for Host and TLS
    port: int
    target: str  # path and query
    address: str  # the checked address the request connects to


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    body: str  # the start of the answer, decoded leniently
    latency_ms: float
    error: str | None = None  # why no answer came (timeout, refused, connection failed)
    retry_after: float | None = None  # seconds, when the receiver asked for a pause

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@lru_cache(maxsize=16)
def _allowed_networks(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet, in every spelling."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    if any(address in network for network in _BLOCKED_NETWORKS if network.version == address.version):
        return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def is_allowed(address: IPAddress, settings: Settings) -> bool:
    """Public, or inside a network the operator opened."""
    if is_public(address):
        return True
    networks = _allowed_networks(tuple(settings.webhook_allowed_networks))
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in network
        for candidate in candidates
        for network in networks
        if network.version == candidate.version
    )


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, legacy IPv4 forms included (``2130706433``,
    ``0x7f000001``, ``127.1``, ``0177.0.0.1``): what a resolver would make of them."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if (
        host
        and all(part for part in host.split("."))
        and all(part.lower().startswith("0x") or part.isdigit() for part in host.split("."))
    ):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _parse(url: str, settings: Settings) -> tuple[str, str, int, str]:
    if len(url) > MAX_URL_LENGTH or any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise DestinationRefused("Not a valid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused("Not a valid URL") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if settings.webhook_allow_http else ("https",)
    if scheme not in allowed:
        raise DestinationRefused(
            "Only https URLs are allowed" if scheme == "http" else "The URL must use https"
        )
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("The URL may not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DestinationRefused("The URL names no host")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return scheme, host, port or (443 if scheme == "https" else 80), target


def check_url(
    url: str, settings: Settings, *, resolver: Resolver | None = None, resolve: bool = True
) -> Destination | None:
    """Refuse a URL the platform must not send to (``DestinationRefused``, a 422).

    With ``resolve``, the host is resolved and the destination to connect to returned;
    every address must be allowed. A name that does not resolve (yet) is accepted when
    saving (``resolve=False`` returns None for it) and fails at send time."""
    scheme, host, port, target = _parse(url, settings)
    literal = literal_address(host)
    if literal is not None:
        if not is_allowed(literal, settings):
            raise DestinationRefused()
        address = str(literal)
    else:
        addresses = (resolver or system_resolver)(host, port)
        if not addresses:
            if not resolve:
                return None
            raise DestinationRefused("The URL's host name does not resolve")
        parsed = []
        for found in addresses:
            try:
                parsed.append(ipaddress.ip_address(found.split("%")[0]))
            except ValueError:
                raise DestinationRefused() from None
        if not all(is_allowed(candidate, settings) for candidate in parsed):
            raise DestinationRefused()
        address = str(parsed[0])
    return Destination(url=url, scheme=scheme, host=host, port=port, target=target, address=address)


# --- sending ---------------------------------------------------------------------------------------
class _CheckedBackend(httpcore.SyncBackend):
    """Connects only to the checked address, and checks the socket's peer before TLS."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.destination = destination
        self.settings = settings

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(
            self.destination.address, self.destination.port, timeout, local_address, socket_options
        )
        sock = stream.get_extra_info("socket")
        peer = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
        if str(peer) != self.destination.address or not is_allowed(peer, self.settings):
            stream.close()
            raise DestinationRefused()
        return stream


class _Stream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _PinnedTransport(httpx.BaseTransport):
    """httpx over one connection pool whose only way out is the checked address."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=1,
            network_backend=_CheckedBackend(destination, settings),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Stream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def send(
    url: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] | dict[str, str],
    settings: Settings,
    *,
    resolver: Resolver | None = None,
) -> SendResult:
    """POST ``body`` to ``url`` through the guard; never raises for the receiver's sake
    (its failures are in the result), only ``DestinationRefused`` for a refused URL."""
    destination = check_url(url, settings, resolver=resolver)
    assert destination is not None
    started = time.monotonic()
    timeout = settings.webhook_timeout_seconds
    request_headers = {"content-type": "application/json", "user-agent": "Maestro-Webhooks/1"}
    request_headers.update(dict(headers))
    try:
        with httpx.Client(
            transport=_PinnedTransport(destination, settings),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
        ) as client:
            # The URL keeps its name: Host, SNI and the certificate check use it, while
            # the transport connects to the checked address.
            request = client.build_request("POST", url, content=body, headers=request_headers)
            response = client.send(request, stream=True)
            try:
                received = bytearray()
                for chunk in response.iter_raw():
                    received += chunk
                    if len(received) >= RESPONSE_READ_LIMIT or time.monotonic() - started > timeout:
                        break
            finally:
                response.close()
            return SendResult(
                status_code=response.status_code,
                body=bytes(received[:RESPONSE_READ_LIMIT]).decode("utf-8", "replace"),
                latency_ms=round((time.monotonic() - started) * 1000, 3),
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
    except DestinationRefused:
        raise
    except (httpx.TimeoutException, httpcore.TimeoutException, TimeoutError):
        error = f"no answer within {timeout:g}s"
    except Exception as exc:  # the receiver's failure, whatever form it takes, is the result
        error = (f"{type(exc).__name__}: {exc}")[:300]
    return SendResult(
        status_code=None, body="", latency_ms=round((time.monotonic() - started) * 1000, 3), error=error
    )
