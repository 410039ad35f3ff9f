"""Credentials out of URLs before a URL is shown or logged (issue 14 item 9).

``redact_url`` replaces the password of ``user:password@`` (the user name too: it is often a
token) and the value of every query parameter whose name says it is a secret (``apikey``,
``api_key``, ``token``, ``access_token``, ``key``, ``secret``, ``password``, ``signature``...)
with ``***``; the rest of the URL stays readable. ``redact_text`` does the same to every URL
inside a message (an exception text, an error recorded for a source). Both are pure and never
raise: a string that is not a URL comes back unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# A query parameter is secret when its name (case-insensitive, '-' read as '_') is one of these
# or ends in one of the suffixes: apikey, x_api_key, auth_token, client_secret, sessionid...
_SECRET_NAMES = frozenset(
    {
        "key", "apikey", "api_key", "token", "access_token", "refresh_token", "id_token", "secret",
        "password", "passwd", "pass", "pwd", "auth", "authorization", "signature", "sig", "session",
        "sessionid", "session_id", "credential", "credentials", "private_key", "code", "jwt",
    }
)  # fmt: skip
_SECRET_SUFFIXES = ("key", "token", "secret", "password", "passwd", "signature", "session", "sessionid")
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")
_TRAILING = ".,;:)]}"  # punctuation that ends a sentence rather than the URL


def is_secret_name(name: str) -> bool:
    """True for a query-parameter name that carries a credential."""
    normal = unquote(name).strip().lower().replace("-", "_")
    return normal in _SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES)


def _redact_query(query: str) -> str:
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        parts.append(f"{name}={MASK}" if equals and is_secret_name(name) else part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with its credentials masked: ``https://***@host/feed?apikey=***&page=2``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_query(url) if "=" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        netloc = f"{MASK}@{host}"
    query = _redact_query(parts.query)
    fragment = _redact_query(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # nothing secret: the URL exactly as given
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str | None) -> str | None:
    """Every URL inside ``text`` redacted (``redact_url``); None stays None."""
    if not text:
        return text

    def _one(match: re.Match[str]) -> str:
        found = match.group(0)
        tail = ""
        while found and found[-1] in _TRAILING:
            found, tail = found[:-1], found[-1] + tail
        return redact_url(found) + tail

    return _URL.sub(_one, text)
