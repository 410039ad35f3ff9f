"""Where a backtest may send requests, and with which secret: the operator decides, not the caller.

A caller holding the API token chooses predictors; it must not be able to point one at its own
listener and receive a secret of the backtest's environment. So:
- an ``openai`` predictor's endpoint must be one of ``HSIG_OPENAI_ENDPOINTS`` (``host=ENV``
  pairs): its key is read from the variable the operator paired with that host, never from a
  variable the request names;
- a ``service`` predictor's ``url`` must be the configured inference service or a host in
  ``HSIG_INFERENCE_ALLOWED_HOSTS``; the service token goes to the configured one only.
Hosts compare as ``host[:port]`` (the port only when the URL names one), case-insensitively.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from services.backtest.schemas import OpenAISpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.errors import InvalidInput

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


def host_of(url: str, param: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{param} must be an http(s) URL with a host, not {url[:200]!r}", param=param)
    host = parts.hostname.lower()
    return f"{host}:{parts.port}" if parts.port else host


def openai_endpoint(spec: OpenAISpec, settings: BacktestSettings) -> tuple[str, str]:
    """(base URL, name of the environment variable holding its key; empty for none)."""
    base_url = spec.base_url or OPENAI_DEFAULT_URL
    host = host_of(base_url, "base_url")
    endpoints = settings.openai_key_envs()
    if host not in endpoints:
        allowed = ", ".join(sorted(endpoints)) or "none"
        raise InvalidInput(
            f"base_url host {host!r} is not one of HSIG_OPENAI_ENDPOINTS ({allowed})", param="base_url"
        )
    key_env = endpoints[host]
    if spec.api_key_env is not None and spec.api_key_env != key_env:
        raise InvalidInput(
            f"api_key_env is set by the operator per endpoint (HSIG_OPENAI_ENDPOINTS); {host} uses "
            f"{key_env or 'no key'}: leave api_key_env out",
            param="api_key_env",
        )
    return base_url, key_env


def service_endpoint(spec: ServiceSpec, settings: BacktestSettings) -> tuple[str, str]:
    """(inference base URL, the bearer token to send it: the service token only to our own)."""
    own = settings.inference_url.rstrip("/")
    url = (spec.url or own).rstrip("/")
    host = host_of(url, "url")
    if host == host_of(own, "inference_url"):
        return url, settings.api_token
    allowed = {entry.lower() for entry in settings.inference_allowed_hosts}
    if host not in allowed:
        raise InvalidInput(
            f"url host {host!r} is neither HSIG_INFERENCE_URL's nor in HSIG_INFERENCE_ALLOWED_HOSTS",
            param="url",
        )
    return url, ""
