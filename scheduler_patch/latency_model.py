"""Latency model of one server: how long a prefill step and a decode step take.

Two linear models over work features, fitted by non-negative least squares::

    prefill(new, attn) = p0 + p1 * new/1e3 + p2 * attn/1e6
    decode(bs, kv)     = d0 + d1 * bs      + d2 * kv/1e3

    new  = tokens computed in the step      attn = sum_i new_i * (cached_i + new_i / 2)
    bs   = running requests                 kv   = KV tokens they attend to

``attn`` is the query x key work of causal attention over the new rows (cached context plus half
of the new rows, on average). Coefficients come from a profile file (``--slo-latency-profile``)
and are refitted online from measured step times (a window of recent samples per kind), so the
model follows the machine it runs on. Prediction error is measured before each observation.
Pure code: no SGLang or torch imports (the simulator drives the same model).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Kind = Literal["prefill", "decode"]
PROFILE_VERSION = 1


class StepSample(NamedTuple):
    """One measured model step (a prefill step or a decode step)."""

    kind: Kind
    new_tokens: int  # prefill: tokens computed; decode: = batch size
    attn_work: float  # prefill: sum new_i * (cached_i + new_i / 2); decode: 0
    batch_size: int
    kv_tokens: int  # decode: KV tokens read by the batch; prefill: 0
    seconds: float


def prefill_features(new: float, attn: float) -> list[float]:
    return [1.0, new / 1e3, attn / 1e6]


def decode_features(bs: float, kv: float) -> list[float]:
    return [1.0, float(bs), kv / 1e3]


def attn_work(new: int, cached: int) -> float:
    """Attention work of computing ``new`` rows after ``cached`` cached tokens."""
    return new * (cached + new / 2)


def features(sample: StepSample) -> list[float]:
    if sample.kind == "prefill":
        return prefill_features(sample.new_tokens, sample.attn_work)
    return decode_features(sample.batch_size, sample.kv_tokens)


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with coefficients >= 0 (active set: drop negative terms and refit)."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            return coef
        active.pop(int(np.argmin(sol)))
    return coef


def robust_fit(x: np.ndarray, y: np.ndarray, trim: float = 0.1) -> np.ndarray:
    """Non-negative fit of *relative* error (rows weighted by 1/y: a 10 ms step counts as much as
    a 1 s one), then refitted without the ``trim`` share of worst rows.

    NOTE: step times on a shared machine have heavy upper tails (descheduling, GC, first runs of
    a shape); a few such rows would otherwise dominate the intercept."""
    w = 1.0 / np.maximum(y, 1e-6)
    coef = nnls(x * w[:, None], y * w)
    if trim > 0 and len(y) >= 20:
        rel = np.abs(x @ coef - y) * w
        keep = rel <= np.quantile(rel, 1.0 - trim)
        coef = nnls(x[keep] * w[keep, None], y[keep] * w[keep])
    return coef


@dataclass
class ErrorStats:
    """Relative prediction error of steps predicted before they were measured."""

    count: int = 0
    abs_rel_sum: float = 0.0
    rel_sum: float = 0.0

    def add(self, predicted: float, measured: float) -> None:
        if measured <= 0:
            return
        rel = (predicted - measured) / measured
        self.count += 1
        self.abs_rel_sum += abs(rel)
        self.rel_sum += rel

    def as_dict(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"count": self.count, "mape": self.abs_rel_sum / n, "bias": self.rel_sum / n}


@dataclass
class LatencyModel:
    """Predicts step times (seconds); learns from :meth:`observe`.

    Until a kind has a profile or ``min_samples`` measurements its predictions are 0 and
    :attr:`calibrated` is False for it (policies then fall back to deadline order).
    """

    prefill_coef: list[float] | None = None
    decode_coef: list[float] | None = None
    window: int = 512
    min_samples: int = 8
    refit_every: int = 8
    errors: dict[str, ErrorStats] = field(default_factory=dict)
    _since_fit: dict[str, int] = field(default_factory=dict)
    _rows: dict[str, deque[tuple[float, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("prefill", "decode"):
            self.errors.setdefault(kind, ErrorStats())
            self._since_fit.setdefault(kind, 0)
            self._rows.setdefault(kind, deque(maxlen=self.window))

    # ------------------------------------------------------------------ prediction
    def calibrated(self, kind: Kind) -> bool:
        return (self.prefill_coef if kind == "prefill" else self.decode_coef) is not None

    def prefill(self, new: int, attn: float) -> float:
        """Seconds for a prefill step computing ``new`` tokens with attention work ``attn``."""
        if self.prefill_coef is None or new <= 0:
            return 0.0
        c = self.prefill_coef  # NOTE: plain float math: policies call this per waiting request
        return c[0] + c[1] * new / 1e3 + c[2] * attn / 1e6

    def prefill_request(self, new: int, cached: int) -> float:
        """Seconds to prefill one request alone (``new`` tokens after ``cached`` cached)."""
        return self.prefill(new, attn_work(new, cached))

    def decode(self, bs: int, kv: int) -> float:
        """Seconds for one decode step of ``bs`` requests reading ``kv`` KV tokens."""
        if self.decode_coef is None or bs <= 0:
            return 0.0
        c = self.decode_coef
        return c[0] + c[1] * bs + c[2] * kv / 1e3

    def predict(self, sample: StepSample) -> float:
        if sample.kind == "prefill":
            return self.prefill(sample.new_tokens, sample.attn_work)
        return self.decode(sample.batch_size, sample.kv_tokens)

    # ------------------------------------------------------------------ learning
    def observe(self, sample: StepSample) -> None:
        """Record a measured step; refit the kind's coefficients every ``refit_every`` steps."""
        if self.calibrated(sample.kind):
            self.errors[sample.kind].add(self.predict(sample), sample.seconds)
        rows = self._rows[sample.kind]  # NOTE: feature rows, not samples: refits stay cheap
        rows.append((*features(sample), sample.seconds))
        self._since_fit[sample.kind] += 1
        uncalibrated = not self.calibrated(sample.kind)
        due = self._since_fit[sample.kind] >= self.refit_every
        if len(rows) >= self.min_samples and (due or uncalibrated):
            self._fit_array(sample.kind, np.array(rows))

    def fit(self, kind: Kind, samples: Iterable[StepSample]) -> None:
        """Fit ``kind``'s coefficients to ``samples`` (other kinds are ignored)."""
        rows = [(*features(s), s.seconds) for s in samples if s.kind == kind]
        if rows:
            self._fit_array(kind, np.array(rows))

    def _fit_array(self, kind: Kind, rows: np.ndarray) -> None:
        x, y = rows[:, :-1], rows[:, -1]
        coef = [float(c) for c in robust_fit(x, y)]
        if kind == "prefill":
            self.prefill_coef = coef
        else:
            self.decode_coef = coef
        self._since_fit[kind] = 0

    # ------------------------------------------------------------------ profiles
    def to_profile(self, note: str = "") -> dict[str, object]:
        return {
            "version": PROFILE_VERSION,
            "note": note,
            "prefill": self.prefill_coef,
            "decode": self.decode_coef,
            "prefill_features": "1, new_tokens/1e3, attn_work/1e6",
            "decode_features": "1, batch_size, kv_tokens/1e3",
        }

    def state(self) -> dict[str, object]:
        """Coefficients, sample counts and prediction error (for ``/server_info``)."""
        return {
            "prefill_coef": self.prefill_coef,
            "decode_coef": self.decode_coef,
            "samples": {k: len(v) for k, v in self._rows.items()},
            "error": {k: v.as_dict() for k, v in self.errors.items()},
        }

    @classmethod
    def from_profile(cls, profile: dict[str, object], **kwargs: object) -> LatencyModel:
        if profile.get("version") != PROFILE_VERSION:
            raise ValueError(f"latency profile version {profile.get('version')!r} is not 1")
        coefs = {k: _coef(profile.get(k), k) for k in ("prefill", "decode")}
        return cls(prefill_coef=coefs["prefill"], decode_coef=coefs["decode"], **kwargs)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path, **kwargs: object) -> LatencyModel:
        try:
            profile = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read latency profile {path}: {e}") from None
        if not isinstance(profile, dict):
            raise ValueError(f"latency profile {path}: expected a JSON object")
        return cls.from_profile(profile, **kwargs)


def _coef(value: object, kind: str) -> list[float] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, list | tuple) else []
    if len(items) != 3 or not all(isinstance(v, int | float) and v >= 0 for v in items):
        raise ValueError(f"latency profile: {kind!r} must be 3 non-negative numbers, got {value!r}")
    return [float(v) for v in items]
