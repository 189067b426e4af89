"""Client options shared by :class:`Client` and :class:`AsyncClient`: retries, keepalive,
and the checks of the connection arguments.

:class:`RetryPolicy` becomes the ``retryPolicy`` of gRPC's service config for the
idempotent reads (``QueryPersons``, ``ListCacheKeys``, ``GetStats``,
``ListSessions``, ``GetServerInfo`` and the health check); calls that change
something (``Invalidate``, ``ResetStats``, ``EndSession(s)``) and the event
stream are never retried. :class:`Keepalive` becomes gRPC's keepalive channel
options. Both apply to a channel the client makes; an injected channel keeps its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

import grpc

__all__ = ["ChannelOptions", "ClientConfig", "Keepalive", "RetryPolicy", "configure"]

#: gRPC channel options, as ``grpc.insecure_channel(options=...)`` takes them.
ChannelOptions: TypeAlias = list[tuple[str, str | int]]
_Metadata: TypeAlias = tuple[tuple[str, str], ...]

# gRPC limits maxAttempts to 5 (more is lowered to 5); fewer than 2 is no retry at all.
_MAX_ATTEMPTS = 5

# The service config's camelCase keys, and the RetryPolicy fields they fill.
_RETRY_KEYS = {
    "maxAttempts": "max_attempts",
    "initialBackoff": "initial_backoff",
    "maxBackoff": "max_backoff",
    "backoffMultiplier": "backoff_multiplier",
    "retryableStatusCodes": "retryable_status_codes",
}


def _seconds(value: object, field: str) -> float:
    """A number of seconds, or gRPC's duration text such as ``"0.1s"``."""
    if isinstance(value, str) and value.endswith("s"):
        value = value.removesuffix("s")
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{field} must be seconds, e.g. 0.1 or '0.1s'") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be seconds, e.g. 0.1 or '0.1s', got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{field} must be a positive number of seconds, got {value!r}")
    return seconds


def _duration_text(seconds: float) -> str:
    # The service config's proto3 JSON duration: decimal seconds with an "s".
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often, and after how long, gRPC retries a failed idempotent read.

    The defaults retry an ``UNAVAILABLE`` read up to 3 more times (4 attempts),
    waiting a random time up to 0.1 s, 0.2 s, then 0.4 s (exponential backoff with
    jitter, at most ``max_backoff``). The deadline of the call (the client's
    ``timeout``) covers every attempt. Add ``"CANCELLED"`` to
    ``retryable_status_codes`` behind a proxy that drains replicas (see the README).
    """

    #: Attempts in all, the first included: 2 to 5 (gRPC's own upper limit).
    max_attempts: int = 4
    #: Seconds: the first backoff's upper bound.
    initial_backoff: float = 0.1
    #: Seconds: no backoff is longer.
    max_backoff: float = 1.0
    #: Each backoff's upper bound is the previous one's times this.
    backoff_multiplier: float = 2.0
    #: Status codes (names or :class:`grpc.StatusCode`) that are retried.
    retryable_status_codes: Sequence[str | grpc.StatusCode] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValueError(f"max_attempts must be an int, got {attempts!r}")
        if not 2 <= attempts <= _MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 2 to {_MAX_ATTEMPTS}, got {attempts}")
        for name in ("initial_backoff", "max_backoff", "backoff_multiplier"):
            object.__setattr__(self, name, _seconds(getattr(self, name), name))
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must not be less than initial_backoff")
        object.__setattr__(self, "retryable_status_codes", _codes(self.retryable_status_codes))

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RetryPolicy:
        """A policy from a service config ``retryPolicy`` object (camelCase keys, durations
        as ``"0.1s"``) or from this class's own field names."""
        fields = {field.name for field in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in config.items():
            name = _RETRY_KEYS.get(key, key)
            if name not in fields:
                known = ", ".join(_RETRY_KEYS)
                raise ValueError(f"unknown retry policy key {key!r} (known: {known})")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]  # each value is checked by __post_init__

    def to_config(self) -> dict[str, object]:
        """This policy as gRPC's service config ``retryPolicy`` object."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration_text(self.initial_backoff),
            "maxBackoff": _duration_text(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_status_codes),
        }


def _codes(codes: Iterable[str | grpc.StatusCode]) -> tuple[str, ...]:
    if isinstance(codes, str):
        codes = [codes]
    names: list[str] = []
    for code in codes:
        name = code.name if isinstance(code, grpc.StatusCode) else str(code).upper()
        if name not in grpc.StatusCode.__members__ or name == "OK":
            raise ValueError(f"not a retryable gRPC status code: {code!r}")
        names.append(name)
    if not names:
        raise ValueError("retryable_status_codes must name at least one status code")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Keepalive:
    """HTTP/2 keepalive pings, to notice a dead connection (or keep a NAT mapping).

    ``time``: seconds of quiet on the connection before the client pings;
    ``timeout``: seconds to wait for the ping's answer before the connection is
    closed as dead (its calls fail with ``UNAVAILABLE``); ``permit_without_calls``:
    ping also while no call is open. A server refuses pings more often than it
    allows (gRPC's default is every 5 minutes without calls) by closing the
    connection with ``too_many_pings``; the defaults fit that default.
    """

    time: float = 300.0
    timeout: float = 20.0
    permit_without_calls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _seconds(self.time, "keepalive time"))
        object.__setattr__(self, "timeout", _seconds(self.timeout, "keepalive timeout"))
        if not isinstance(self.permit_without_calls, bool):
            raise ValueError("permit_without_calls must be a bool")

    def channel_options(self) -> ChannelOptions:
        """The gRPC channel options of this keepalive."""
        return [
            ("grpc.keepalive_time_ms", round(self.time * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.timeout * 1000)),
            # What gRPC's HTTP/2 transport waits for the answer to a ping it sent
            # (default 1 minute); keepalive_timeout_ms alone does not bound it.
            ("grpc.http2.ping_timeout_ms", round(self.timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            # Keep pinging a quiet but open connection (gRPC's default stops after 2).
            ("grpc.http2.max_pings_without_data", 0),
        ]


def service_config(policy: RetryPolicy, methods: Iterable[tuple[str, str]]) -> str:
    """gRPC's service config JSON retrying ``methods`` ((service, method) names) under
    ``policy``."""
    names = [{"service": service, "method": method} for service, method in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy.to_config()}]})


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """The checked connection arguments of a client (either kind)."""

    target: str
    timeout: float | None
    tls: bool
    auth: _Metadata
    options: ChannelOptions
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None

    def credentials(self) -> grpc.ChannelCredentials:
        """The TLS credentials of the connection (only when :attr:`tls`)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def configure(
    target: str,
    *,
    timeout: float | None,
    injected: bool,
    token: str | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    retry_policy: RetryPolicy | Mapping[str, object] | None,
    keepalive: Keepalive | None,
    retried: Iterable[tuple[str, str]],
) -> ClientConfig:
    """Check a client's arguments (``ValueError`` naming the one at fault).

    ``retried`` names the methods (service, method) ``retry_policy`` applies to.
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive or None, got {timeout!r}")
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain must be given together")
    tls = root_certificates is not None or private_key is not None
    if injected and tls:
        raise ValueError("give either channel or TLS material, not both")
    if injected and (retry_policy is not None or keepalive is not None):
        raise ValueError(
            "retry_policy and keepalive configure a channel the client makes: "
            "give them to your own channel instead"
        )
    auth: _Metadata = ()
    if token is not None:
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            # Never echo the token itself.
            raise ValueError("token must be non-empty printable ASCII without spaces")
        auth = (("authorization", f"Bearer {token}"),)
    options: ChannelOptions = []
    if retry_policy is not None:
        if not isinstance(retry_policy, RetryPolicy):
            retry_policy = RetryPolicy.from_config(retry_policy)
        config = service_config(retry_policy, retried)
        options += [("grpc.enable_retries", 1), ("grpc.service_config", config)]
    if keepalive is not None:
        options += keepalive.channel_options()
    return ClientConfig(
        target=target,
        timeout=timeout,
        tls=tls,
        auth=auth,
        options=options,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
