"""Which gateway ``/metrics`` pages the canary controller reads: fixed URLs, or every pod behind a name.

An autoscaled gateway Deployment has no fixed list of processes, and its Service URL reaches one random
pod per request. A Kubernetes *headless* Service instead resolves to one address per ready pod, so a URL
written ``dns+http://flywheel-gateway-pods:8000/metrics`` stands for every gateway pod at the moment of
reading: the name is resolved on each read (``getaddrinfo``, the system resolver, so the cluster DNS and
its TTLs apply) and each address becomes its own target. Plain ``http(s)://`` URLs are used as written.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

DNS_PREFIX = "dns+"


def expand(urls: list[str]) -> list[str]:
    """The concrete URLs to scrape now: each ``dns+`` URL becomes one URL per address of its host
    (sorted, de-duplicated; none when the name does not resolve, e.g. while no pod is ready)."""
    targets: list[str] = []
    for url in urls:
        if not url.startswith(DNS_PREFIX):
            targets.append(url)
            continue
        parts = urlsplit(url[len(DNS_PREFIX) :])
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        for address in _addresses(host, port):
            netloc = f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"
            targets.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")))
    return list(dict.fromkeys(targets))


def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})
