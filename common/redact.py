"""URLs fit for logs, errors and reprs: a password in the URL's user part is replaced.

Broker and vCenter URLs are documented without a password (it comes from a secret), but
``amqp://user:pw@host/`` still works, so everything that prints a URL prints this.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` with the password of its user part (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: nothing in it can be trusted to print
        return HIDDEN if "@" in url else url
    user, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{HIDDEN}@{host}"))
