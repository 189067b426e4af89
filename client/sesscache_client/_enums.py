"""Python enums of the ``sesscache.v1`` proto enums, derived from their descriptors.

Protobuf's Python API reads an enum field as a plain int (``page.cache_status``
is ``1``). These :class:`enum.IntEnum` classes name those ints: members are the
proto's value names without the enum's prefix, so ``CacheStatus(page.cache_status)``
is ``<CacheStatus.HIT: 1>``, ``str()`` of it is ``"HIT"``, and a member compares
equal to the proto's int (``CacheStatus.HIT == sesscache_pb2.CACHE_STATUS_HIT``).
They are built from the descriptors when this module is imported, so a value
added to the proto appears here without an edit. A number the proto does not
know becomes a pseudo-member named by the number (like protobuf keeps it).
"""

from __future__ import annotations

import enum
import re
import types
from typing import Any

from google.protobuf.descriptor import EnumDescriptor

from sesscache_client.v1 import sesscache_pb2

__all__ = ["CacheEntryOrder", "CacheEventType", "CacheStatus", "PersonView", "ProtoEnum"]


class ProtoEnum(enum.IntEnum):
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


#: The proto enum each derived enum comes from.
_DESCRIPTORS: dict[type[ProtoEnum], EnumDescriptor] = {}


def _prefix(descriptor: EnumDescriptor) -> str:
    # CacheEventType -> CACHE_EVENT_TYPE_ (the proto style guide's value prefix).
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


def derive(descriptor: EnumDescriptor) -> type[ProtoEnum]:
    """A :class:`ProtoEnum` named like the proto enum, one member per value."""
    prefix = _prefix(descriptor)

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = __name__
        namespace["__qualname__"] = descriptor.name
        for value in descriptor.values:
            namespace[value.name.removeprefix(prefix)] = value.number  # a member each

    derived = types.new_class(descriptor.name, (ProtoEnum,), exec_body=body)
    if not issubclass(derived, ProtoEnum):  # pragma: no cover - new_class made it so
        raise TypeError(derived)
    _DESCRIPTORS[derived] = descriptor
    return derived


_ENUMS = sesscache_pb2.DESCRIPTOR.enum_types_by_name

#: Whether a query page came from the cache: HIT, MISS, BYPASS (UNSPECIFIED: 0).
CacheStatus = derive(_ENUMS["CacheStatus"])
#: How much of each person a query returns: BASIC, FULL.
PersonView = derive(_ENUMS["PersonView"])
#: The order of a cache listing: STORED, HITS, SIZE.
CacheEntryOrder = derive(_ENUMS["CacheEntryOrder"])
#: The type of a cache event: HIT, MISS, STORE, INVALIDATE, EVICT, EXPIRE, SESSION_END.
CacheEventType = derive(_ENUMS["CacheEventType"])
