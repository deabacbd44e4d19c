"""Is a ClearML server configured, and does it answer? Decided in seconds, before the SDK's long retries start.

With credentials set and nothing listening, the SDK's default retries keep Task.init trying for minutes (see
the shared notes and tests/test_clearml_standin.py), so every command that needs the server asks here first.
Each failure says what happened: the name does not resolve, the port refused the connection, nothing answered
the connection in time, the server took the connection and sent no reply, or it refused the login.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


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


def probe(url: str, timeout_s: float = 5.0) -> None:
    """Raise ServerUnavailableError, saying what happened, unless `url` takes a connection and replies to an HTTP
    request within `timeout_s` each (any reply: a login is what decides the rest)."""
    import requests

    parsed = urlparse(url if "://" in url else f"https://{url}")
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror:
        raise ServerUnavailableError(f"the ClearML server {url} does not answer: {host!r} does not resolve") from None
    except ConnectionRefusedError:
        raise ServerUnavailableError(
            f"the ClearML server {url} does not answer: {host}:{port} refused the connection (is the server "
            f"running, on that port?)"
        ) from None
    except TimeoutError:
        raise ServerUnavailableError(
            f"the ClearML server {url} does not answer: no connection to {host}:{port} in {timeout_s:g} s"
        ) from None
    except OSError as exc:  # unreachable network, no route to host ...
        raise ServerUnavailableError(f"the ClearML server {url} does not answer: {exc.strerror or exc}") from None
    try:
        # HEAD on the server's URL: any status is a reply (the login decides the rest), and no API call is made.
        requests.head(url, timeout=(timeout_s, timeout_s), allow_redirects=False)
    except requests.exceptions.Timeout:
        raise ServerUnavailableError(
            f"the ClearML server {url} does not answer: it accepted the connection but sent no reply in "
            f"{timeout_s:g} s"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise ServerUnavailableError(f"the ClearML server {url} does not answer HTTP: {exc}") from None


def check_server(timeout_s: float = 5.0) -> str:
    """The API server URL once it has answered a login; raises ServerUnavailableError within seconds otherwise."""
    url = api_server()
    if url is None:
        raise ServerUnavailableError(
            "no ClearML server is configured: run `clearml-init` (or set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY "
            "and CLEARML_API_SECRET_KEY), or run with --local, which needs no server"
        )
    probe(url, timeout_s)
    from clearml.backend_api import Session

    try:  # no retries: a refused or failing login is reported now, not after minutes of backoff
        Session(http_retries_config={"total": 0, "connect": 0, "read": 0})
    except Exception as exc:  # the SDK raises LoginError, ConnectionError or ValueError here
        raise ServerUnavailableError(f"the ClearML server {url} refused the login: {exc}") from exc
    return url


def unserved_queues(names: list[str]) -> dict[str, bool]:
    """Of the named queues, those no agent listens to: name -> whether the queue exists at all. A task enqueued on
    one waits (Pending in the UI) until an agent starts; on a queue that does not exist it cannot be enqueued."""
    import re

    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    listened = {queue.name for worker in client.workers.get_all() for queue in worker.queues or []}
    unserved = {}
    for name in dict.fromkeys(names):
        if name not in listened:
            unserved[name] = bool(client.queues.get_all(name=f"^{re.escape(name)}$", only_fields=["id"]))
    return unserved


def check_queues(uses: dict[str, str], flags: str, services_queue: str = "") -> None:
    """Before anything is enqueued (`uses`: what waits on which queue): a queue that does not exist is an error,
    since nothing can be enqueued there, and one no agent listens to is said now, since its tasks would wait in
    Pending without a word. `flags`: the options that choose the queues, for the error message."""
    roles: dict[str, list[str]] = {}
    for role, name in uses.items():
        roles.setdefault(name, []).append(role)
    unserved = unserved_queues(list(roles))
    if missing := [name for name, exists in unserved.items() if not exists]:
        raise ValueError(
            f"no queue named {', '.join(map(repr, missing))} on the server: create it (web UI: Orchestration > "
            f"Queues, or start its agent with `clearml-agent daemon --queue NAME --create-queue`), or choose "
            f"another with {flags}"
        )
    for name in unserved:
        services = " --services-mode" if name == services_queue else ""
        print(f"warning: no agent listens to queue {name!r}: {' and '.join(roles[name])} will wait there (Pending) "
              f"until one starts, e.g. `clearml-agent daemon --queue {name}{services}`", flush=True)
