"""Per-request SLOs: what a request asks for, where it says so, and the server's named classes.

A request states its SLOs in any of these places (later rows override earlier ones):

| where                                  | keys                                              |
|----------------------------------------|---------------------------------------------------|
| server defaults                        | --slo-default-ttft-ms, --slo-default-tpot-ms      |
| a named class (--slo-classes)          | custom_params.slo_class (or header x-slo-class)   |
| custom_params (/generate: inside       | slo_ttft_ms, slo_tpot_ms                          |
| sampling_params; OpenAI: top level)    |                                                   |
| HTTP headers (llm-d's convention)      | x-slo-ttft-ms, x-slo-tpot-ms                      |

Priority is SGLang's own ``priority`` field (higher = more important); a class may give a default.
Pure code: no SGLang or torch imports (the simulator uses it too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TTFT_KEY = "slo_ttft_ms"
TPOT_KEY = "slo_tpot_ms"
CLASS_KEY = "slo_class"
ARRIVAL_KEY = "slo_arrival"  # stamped by the tokenizer hook: wall-clock seconds at receipt
HEADERS = {"x-slo-ttft-ms": TTFT_KEY, "x-slo-tpot-ms": TPOT_KEY, "x-slo-class": CLASS_KEY}
DEFAULT_CLASS = "default"
MAX_SLO_MS = 86_400_000.0  # one day: anything longer is a typo, not an SLO


class SloError(ValueError):
    """A request's SLO fields are invalid (HTTP 400), or a ``--slo-*`` flag is (start-up)."""


@dataclass(frozen=True)
class SloClass:
    """A named SLO class: targets in milliseconds (None: no target) and a default priority."""

    name: str
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Slo:
    """The SLOs one request is held to (seconds; None: no target)."""

    ttft_s: float | None
    tpot_s: float | None
    slo_class: str
    priority: int

    @property
    def has_target(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None


def _ms(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SloError(f"{what} must be a number of milliseconds, got {value!r}")
    try:
        ms = float(value)
    except ValueError:
        raise SloError(f"{what} must be a number of milliseconds, got {value!r}") from None
    if not math.isfinite(ms) or ms <= 0 or ms > MAX_SLO_MS:
        raise SloError(f"{what} must be > 0 and <= {MAX_SLO_MS:.0f} ms, got {value!r}")
    return ms


def parse_classes(spec: str) -> dict[str, SloClass]:
    """``--slo-classes``: ``name:ttft=MS,tpot=MS,priority=N;name2:...`` (any key optional).

    >>> parse_classes("interactive:ttft=300,tpot=50,priority=2;batch:priority=0")["batch"]
    SloClass(name='batch', ttft_ms=None, tpot_ms=None, priority=0)
    """
    out: dict[str, SloClass] = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, sep, body = item.partition(":")
        name = name.strip()
        if not name or not sep or not name.replace("-", "").replace("_", "").isalnum():
            raise SloError(f"--slo-classes: expected 'name:key=value,...', got {item!r}")
        if name in out:
            raise SloError(f"--slo-classes: class {name!r} given twice")
        values: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in body.split(","))):
            key, eq, raw = pair.partition("=")
            key = key.strip()
            if not eq or key not in ("ttft", "tpot", "priority"):
                raise SloError(
                    f"--slo-classes: class {name!r}: expected ttft=MS, tpot=MS or priority=N, "
                    f"got {pair!r}"
                )
            if key == "priority":
                try:
                    values[key] = int(raw)
                except ValueError:
                    raise SloError(f"--slo-classes: class {name!r}: bad priority {raw!r}") from None
            else:
                values[f"{key}_ms"] = _ms(raw.strip(), f"--slo-classes {name}.{key}")
        out[name] = SloClass(name, **values)
    return out


@dataclass(frozen=True)
class SloDefaults:
    """Server-wide SLO settings (from the ``--slo-*`` flags)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    classes: Mapping[str, SloClass] | None = None

    def resolve(self, custom: Mapping[str, Any] | None, priority: int | None) -> Slo:
        """The SLO of a request from its ``custom_params`` and SGLang ``priority``.

        Raises :class:`SloError` (HTTP 400) for bad values or an unknown class.
        """
        custom = custom or {}
        classes = self.classes or {}
        name = custom.get(CLASS_KEY)
        if name is not None and (not isinstance(name, str) or name not in classes):
            known = ", ".join(sorted(classes)) or "none configured (--slo-classes)"
            raise SloError(f"unknown {CLASS_KEY} {name!r}; known classes: {known}")
        cls = classes.get(name) if isinstance(name, str) else None
        ttft = cls.ttft_ms if cls and cls.ttft_ms is not None else self.ttft_ms
        tpot = cls.tpot_ms if cls and cls.tpot_ms is not None else self.tpot_ms
        if custom.get(TTFT_KEY) is not None:
            ttft = _ms(custom[TTFT_KEY], TTFT_KEY)
        if custom.get(TPOT_KEY) is not None:
            tpot = _ms(custom[TPOT_KEY], TPOT_KEY)
        if priority is None:
            priority = cls.priority if cls and cls.priority is not None else 0
        return Slo(
            ttft_s=None if ttft is None else ttft / 1e3,
            tpot_s=None if tpot is None else tpot / 1e3,
            slo_class=name if isinstance(name, str) else DEFAULT_CLASS,
            priority=int(priority),
        )


def header_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """SLO ``custom_params`` from HTTP headers (validated: :class:`SloError` for bad values)."""
    out: dict[str, Any] = {}
    for header, key in HEADERS.items():
        value = headers.get(header)
        if value is None:
            continue
        out[key] = value.strip() if key == CLASS_KEY else _ms(value, f"header {header}")
    return out


def check_fields(custom: Mapping[str, Any], defaults: SloDefaults) -> None:
    """Validate a request's SLO fields early (tokenizer side) so the client gets a 400."""
    defaults.resolve(custom, 0)
