"""What a client may learn through ``/server_info``: no secrets, and no other client's requests.

**Secrets.** SGLang 0.5.23's ``/server_info`` returns every server argument and the launch command
line, ``--api-key``, ``--admin-api-key``, ``--ssl-keyfile-password`` and the storage backends'
free-form configs (which may hold credentials) included, to any caller
(with only an admin key configured, ``/server_info`` needs no key at all): one read hands out the
admin key; each scheduler's ``internal_states`` entry repeats the arguments. An AFTER hook on
``sglang.srt.utils.common.build_server_info`` and the hook on ``get_internal_state`` below replace
those values by ``"<redacted>"``, in the fields and in ``launch_command``.

**Request ids.**
The scheduler's ``mepic_sglang.chunks.running`` lists every request that holds KV, with its request
id. A request id is a handle: SGLang's ``/abort_request`` aborts every request whose id *starts
with* the given string. So request ids leave the server only to an operator: when SGLang's
``--admin-api-key`` is configured and the caller presented it (``Authorization: Bearer <key>``).
Everyone else (and every caller of a server without an admin key) sees the same entries without
their ``rid``. With both ``--api-key`` and ``--admin-api-key`` set, SGLang accepts only the API key
on ``/server_info``, so request ids are shown to nobody there (the scheduler log has them).

How the caller is known: ``/server_info`` passes no request to the code that builds the reply, so
an AFTER hook on SGLang's auth decision (``sglang.srt.utils.auth.decide_request_auth``, called by
SGLang's API-key middleware for every HTTP request when a key is configured) records in a context
variable whether this request carried the admin key; the context of an HTTP request's task is its
own, so the value never leaks between requests. An AROUND hook on
``TokenizerManager.get_internal_state`` then redacts the reply unless it is set.
"""

from __future__ import annotations

import contextvars
import secrets
import shlex
from collections.abc import Callable, Coroutine
from typing import Any

_ADMIN = contextvars.ContextVar("mepic_sglang_admin_request", default=False)
REDACTED_KEYS = ("rid",)
# NOTE: the two extra configs are free-form JSON that storage backends read credentials from
SECRET_ARGS = (
    "api_key",
    "admin_api_key",
    "ssl_keyfile_password",
    "hicache_storage_backend_extra_config",
    "unified_cache_external_linker_config",
)
REDACTED = "<redacted>"


def redact_command_line(command: str) -> str:
    """``command`` with the value of every secret flag (``--flag v`` or ``--flag=v``) redacted."""
    flags = {"--" + name.replace("_", "-") for name in SECRET_ARGS}
    try:
        words = shlex.split(command)
    except ValueError:  # NOTE: unbalanced quotes: redact the whole line rather than guess
        return REDACTED
    out: list[str] = []
    hide_next = False
    for word in words:
        name, eq, _ = word.partition("=")
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif name in flags and eq:
            out.append(f"{name}={REDACTED}")
        else:
            out.append(word)
            hide_next = word in flags
    return shlex.join(out)


def redact_secrets(value: Any) -> Any:
    """``value`` (nested dicts and lists, edited in place) with every secret server argument and
    every ``launch_command`` redacted."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in SECRET_ARGS and item is not None:
                value[key] = REDACTED
            elif key == "launch_command" and isinstance(item, str):
                value[key] = redact_command_line(item)
            else:
                redact_secrets(item)
    elif isinstance(value, list):
        for item in value:
            redact_secrets(item)
    return value


def after_build_server_info(result: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``build_server_info(server_args, scheduler_info)``: no secrets in ``/server_info``."""
    return redact_secrets(result)


def presented_admin_key(authorization: str | None, admin_api_key: str | None) -> bool:
    """``Authorization: Bearer <admin_api_key>``, compared in constant time."""
    if not admin_api_key or not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token, admin_api_key)


def after_decide_request_auth(result: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``decide_request_auth(*, method, path, authorization_header, api_key, admin_api_key,
    auth_level)`` (keyword-only): remember whether this HTTP request is an operator's."""
    allowed = bool(getattr(result, "allowed", False))
    _ADMIN.set(
        allowed
        and presented_admin_key(kwargs.get("authorization_header"), kwargs.get("admin_api_key"))
    )
    return result


def redact(states: list[Any]) -> list[Any]:
    """``internal_states`` without request ids in the plugin's entries (a new list; the
    scheduler's reply is not shared with anything else, so entries are edited in place)."""
    for state in states:
        plugin = state.get("mepic_sglang") if isinstance(state, dict) else None
        chunks = plugin.get("chunks") if isinstance(plugin, dict) else None
        running = chunks.get("running") if isinstance(chunks, dict) else None
        for entry in running if isinstance(running, list) else ():
            for key in REDACTED_KEYS:
                if isinstance(entry, dict):
                    entry.pop(key, None)
    return states


def around_get_internal_state(
    original: Callable[..., Coroutine[Any, Any, list[Any]]], manager: Any, *args: Any
) -> Coroutine[Any, Any, list[Any]]:
    """AROUND ``TokenizerManager.get_internal_state`` (async): no secrets; request ids for
    operators only."""

    async def run() -> list[Any]:
        states = redact_secrets(await original(manager, *args))
        return states if _ADMIN.get() else redact(states)

    return run()
