"""Is a ClearML server configured, and does it answer? Decided in seconds, before the SDK's long retries start.

With credentials set and nothing listening, the SDK's default retries keep Task.init trying for minutes (see
the shared notes and tests/test_clearml_standin.py), so every command that needs the server asks here first.
"""

from __future__ import annotations

import os


class ServerUnavailableError(RuntimeError):
    """No ClearML server configured, or the configured one does not answer. The message is for the user."""


def offline() -> bool:
    return os.environ.get("CLEARML_OFFLINE_MODE", "").lower() in ("1", "true", "yes", "on")


def api_server() -> str | None:
    """The configured API server, or None when no credentials are set (then there is no server to use)."""
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_HOST
    from clearml.config import config_obj

    key = ENV_ACCESS_KEY.get() or config_obj.get("api.credentials.access_key", None)
    if not key:
        return None
    return ENV_HOST.get() or config_obj.get("api.api_server", None) or "https://api.clear.ml"


def check_server(timeout_s: float = 5.0) -> str:
    """The API server URL once it has answered a login; raises ServerUnavailableError within seconds otherwise."""
    from registry.hub import reachable

    url = api_server()
    if url is None:
        raise ServerUnavailableError(
            "no ClearML server is configured: run `clearml-init` (or set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY "
            "and CLEARML_API_SECRET_KEY), or run with --local, which needs no server"
        )
    if not reachable(url, timeout_s):
        raise ServerUnavailableError(f"the ClearML server {url} does not answer (no connection in {timeout_s:.0f} s)")
    from clearml.backend_api import Session

    try:  # no retries: a refused or failing login is reported now, not after minutes of backoff
        Session(http_retries_config={"total": 0, "connect": 0, "read": 0})
    except Exception as exc:  # the SDK raises LoginError, ConnectionError or ValueError here
        raise ServerUnavailableError(f"the ClearML server {url} refused the login: {exc}") from exc
    return url
