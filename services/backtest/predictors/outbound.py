"""Where a backtest may send requests, and with which secret: the operator decides, not the caller.

A caller holding the API token chooses predictors; it must not be able to point one at its own
listener and receive a secret of the backtest's environment. So:
- an ``openai`` predictor's endpoint must be one of ``HSIG_OPENAI_ENDPOINTS`` (``host=ENV``
  pairs): its key is read from the variable the operator paired with that host, never from a
  variable the request names;
- a ``service`` predictor's ``url`` must be the configured inference service or a host in
  ``HSIG_INFERENCE_ALLOWED_HOSTS``; the service token goes to the configured one only.
- a ``local`` predictor asked for over HTTP may load only from the adapter and model volumes
  (``local_paths_on_volumes``); the CLI, run by the operator, may name any directory. Either
  way only safetensors are loaded (``services/common/adapters.unsafe_weights``).
Hosts compare as ``host[:port]`` (the port only when the URL names one), case-insensitively.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from services.backtest.schemas import BacktestConfig, LocalSpec, OpenAISpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.errors import InvalidInput

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
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


def local_paths_on_volumes(config: BacktestConfig, settings: BacktestSettings) -> None:
    """Refuse a request's local predictor that would load from outside the adapter and model
    volumes (symlinks followed): over HTTP a path is the caller's choice, a pickle runs code."""
    volumes = [settings.adapters_path.resolve(), settings.models_path.resolve()]
    for spec in config.predictors:
        if not isinstance(spec, LocalSpec):
            continue
        for param, value in (("model", spec.model), ("adapter_dir", spec.adapter_dir)):
            if value is None or (param == "model" and _is_hub_id(value)):
                continue
            resolved = Path(value).resolve()
            if not any(resolved.is_relative_to(volume) for volume in volumes):
                raise InvalidInput(
                    f"a local predictor's {param} must lie under {volumes[0]} or {volumes[1]}; "
                    f"{value[:200]!r} does not",
                    param=param,
                )


def _is_hub_id(value: str) -> bool:
    """``org/name`` naming a Hugging Face model, not a directory here (those load safetensors only)."""
    return bool(_HUB_ID.fullmatch(value)) and not Path(value).exists()
