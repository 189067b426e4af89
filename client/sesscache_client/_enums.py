"""Python enums of the ``sesscache.v1`` proto enums, derived from their descriptors.

Protobuf's Python API reads an enum field as a plain int (``page.cache_status``
is ``1``). These :class:`enum.IntEnum` classes name those ints: members are the
proto's value names without the enum's prefix, so ``CacheStatus(page.cache_status)``
is ``<CacheStatus.HIT: 1>``, ``str()`` of it is ``"HIT"``, and a member equals
the proto's int (``CacheStatus.HIT == sesscache_pb2.CACHE_STATUS_HIT``). The
members are made from the proto's descriptor when the class is created
(``class CacheStatus(ProtoEnum, proto=...)``), so a value added to the proto
appears here without an edit. A number the proto does not know becomes a
pseudo-member named by the number (protobuf keeps such numbers too).

Type checkers see each class, and type ``CacheStatus.HIT`` as a ``CacheStatus``;
as the members come from the descriptor they cannot check the name itself.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from sesscache_client.v1 import sesscache_pb2

__all__ = ["CacheEntryOrder", "CacheEventType", "CacheStatus", "PersonView", "ProtoEnum"]

_E = TypeVar("_E", bound="ProtoEnum")

#: The proto enum each derived enum comes from.
_DESCRIPTORS: dict[type, EnumDescriptor] = {}


def _prefix(descriptor: EnumDescriptor) -> str:
    # CacheEventType -> CACHE_EVENT_TYPE_ (the proto style guide's value prefix).
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


class _ProtoEnumType(enum.EnumType):
    """Makes one member per value of the ``proto=`` enum given to the class."""

    @classmethod
    def __prepare__(  # type: ignore[override]
        metacls, name: str, bases: tuple[type, ...], **kwargs: Any
    ) -> Any:
        namespace = super().__prepare__(name, bases)
        proto: EnumTypeWrapper | None = kwargs.get("proto")
        if proto is not None:
            prefix = _prefix(proto.DESCRIPTOR)
            for value in proto.DESCRIPTOR.values:
                namespace[value.name.removeprefix(prefix)] = value.number  # a member each
        return namespace

    def __new__(
        metacls,
        name: str,
        bases: tuple[type, ...],
        namespace: Any,
        *,
        proto: EnumTypeWrapper | None = None,
        **kwargs: Any,
    ) -> Any:
        cls = super().__new__(metacls, name, bases, namespace, **kwargs)
        if proto is not None:
            _DESCRIPTORS[cls] = proto.DESCRIPTOR
        return cls

    if TYPE_CHECKING:
        # The members exist only at run time (see the module's docstring).
        def __getattr__(cls: type[_E], name: str) -> _E: ...  # type: ignore[misc]


class ProtoEnum(enum.IntEnum, metaclass=_ProtoEnumType):
    """Base of the enums derived from a proto enum: ``str()`` is the short name."""

    @classmethod
    def _missing_(cls, value: object) -> ProtoEnum | None:
        # An open enum (proto3): keep a number this client's proto does not know.
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = str(value)
        member._value_ = value
        return member

    def __str__(self) -> str:
        return self.name

    @property
    def proto_name(self) -> str:
        """The name the proto gives the value, e.g. ``CACHE_STATUS_HIT``."""
        value = _DESCRIPTORS[type(self)].values_by_number.get(int(self))
        return value.name if value is not None else str(int(self))


class CacheStatus(ProtoEnum, proto=sesscache_pb2.CacheStatus):
    """Whether a query page came from the cache: HIT, MISS, BYPASS (UNSPECIFIED: 0)."""


class PersonView(ProtoEnum, proto=sesscache_pb2.PersonView):
    """How much of each person a query returns: BASIC, FULL (UNSPECIFIED: full)."""


class CacheEntryOrder(ProtoEnum, proto=sesscache_pb2.CacheEntryOrder):
    """The order of a cache listing: STORED, HITS, SIZE (UNSPECIFIED: stored)."""


class CacheEventType(ProtoEnum, proto=sesscache_pb2.CacheEventType):
    """The type of a cache event: HIT, MISS, STORE, INVALIDATE, EVICT, EXPIRE, SESSION_END."""


class MissReason(ProtoEnum, proto=sesscache_pb2.MissReason):
    """Why a lookup missed: NEW_SESSION, NEVER_STORED, EVICTED, EXPIRED, INVALIDATED,
    CHANGED, FAILED, SESSION_ENDED."""
