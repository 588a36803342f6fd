"""What a client may put in a request: checks that turn hostile input into an HTTP 4xx.

Two kinds of check, both in the launcher (tokenizer) process:

* **The token-id gate** (:func:`before_create_tokenized_object`, a BEFORE hook on
  ``TokenizerManager._create_tokenized_object``). Every prompt SGLang sends to its scheduler is
  turned into token ids there, whatever field it came from: ``input_ids``, text that SGLang
  tokenised, ``mepic_segments`` (``chunk_ids`` / ``text_ids``), chat content parts, OpenAI
  ``prompt`` token lists. It is the one place every id passes before it can reach the model's
  embedding, so it is the one place they are range-checked (and an empty prompt refused).

  NOTE: stock SGLang 0.5.23 forwards an id outside the vocabulary to the embedding, whose
  ``IndexError`` kills the scheduler and with it every server process; an id of 2**63 or more
  fails SGLang's own ``array("q", ...)`` with an ``OverflowError`` (HTTP 500).
* **Field checks** (:func:`check_cache_salt`, :func:`check_reserved_keys`, called by
  :mod:`mepic_sglang.sglang.request_api` before the plugin reads a request): ``cache_salt`` must be
  a string (chunk keys hash it), the ``custom_params`` keys the plugin writes itself are reserved
  (``mepic_*`` with ``--enable-mepic``, ``slo_arrival`` with ``--schedule-policy multi-slo``), and
  with ``--mepic-require-cache-salt`` every generate request names its tenant.

Errors are :class:`InputError` (a ``ValueError``): SGLang answers HTTP 400 with the message.
"""

from __future__ import annotations

from typing import Any

from mepic_sglang.token_ids import InputError, check_token_ids
from scheduler_patch.slo import ARRIVAL_KEY


def vocab_size_of(manager: Any) -> int:
    """The model's vocabulary size as the tokenizer manager knows it (0: unknown)."""
    return int(getattr(getattr(manager, "model_config", None), "vocab_size", 0) or 0)


def before_create_tokenized_object(
    manager: Any,
    obj: Any,
    input_text: Any,
    input_ids: Any,
    *args: Any,
    **kwargs: Any,
) -> None:
    """BEFORE ``TokenizerManager._create_tokenized_object``: the token-id gate (module doc).

    Multimodal prompts are left to SGLang: their placeholder ids are replaced by the processor's
    pad values in the scheduler and may lie outside the text vocabulary."""
    mm_inputs = kwargs.get("mm_inputs", args[1] if len(args) > 1 else None)
    if input_ids is None or mm_inputs is not None:
        return None
    if not input_ids and not _session_id(obj):
        # NOTE: stock SGLang 0.5.23 runs a 0-token forward for e.g. {"text": ""} on a tokenizer
        # that adds no BOS (SmolLM2), and the RoPE reshape error kills the server.
        raise InputError("the prompt is empty: it tokenises to no tokens")
    check_token_ids(input_ids, vocab_size_of(manager), "input_ids")
    return None


def _session_id(obj: Any) -> Any:
    """A session request may send no new tokens (the session's history is the prompt)."""
    params = getattr(obj, "session_params", None)
    return params.get("id") if isinstance(params, dict) else getattr(params, "id", None)


def _sampling_list(obj: Any) -> list[Any]:
    params = obj.sampling_params
    return params if isinstance(params, list) else [params]


def check_reserved_keys(obj: Any, *, mepic: bool, slo_scheduling: bool) -> None:
    """The ``custom_params`` keys the plugin writes are its own: a client may not forge a chunk
    layout (``mepic_*``) or an arrival time (``slo_arrival`` would move it in the EDF queue or
    force a 429)."""
    for sampling in _sampling_list(obj):
        custom = sampling.get("custom_params") if isinstance(sampling, dict) else None
        if not isinstance(custom, dict):
            continue
        if mepic and any(str(k).startswith("mepic_") for k in custom):
            raise InputError(
                "custom_params keys starting with 'mepic_' are reserved for the plugin"
            )
        if slo_scheduling and ARRIVAL_KEY in custom:
            raise InputError(
                f"custom_params.{ARRIVAL_KEY} is set by the server (the time it received the "
                "request); a request may not send it"
            )


def internal_request(manager: Any, obj: Any) -> bool:
    """SGLang's own requests: the health probe (rid prefix) and the warm-up (sent before the
    server reports itself up). ``--mepic-require-cache-salt`` does not apply to them."""
    from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX
    from sglang.srt.managers.tokenizer_manager import ServerStatus

    from mepic_sglang.sglang import liveness

    rid = getattr(obj, "rid", None)
    if isinstance(rid, str) and rid.startswith(HEALTH_CHECK_RID_PREFIX):
        return True
    starting = getattr(manager, "server_status", None) == ServerStatus.Starting
    return starting and not liveness.holding(manager)  # NOTE: a stall also holds "Starting"


def check_cache_salt(obj: Any, *, required: bool, single: bool) -> None:
    """``cache_salt``: a string (``single``: a request with chunks, whose keys hash it), or a
    list of strings for a batch (SGLang checks the list's length); with
    ``--mepic-require-cache-salt`` a non-empty one for every prompt."""
    salt = getattr(obj, "cache_salt", None)
    salts = salt if isinstance(salt, list) and not single else [salt]
    for s in salts:
        if s is not None and not isinstance(s, str):
            raise InputError(f"cache_salt: expected a string, got {s!r}"[:200])
        if required and not s:
            raise InputError(
                "cache_salt: this server requires a non-empty one per request "
                "(--mepic-require-cache-salt): a string naming the tenant, so that no two "
                "tenants share cached KV"
            )
