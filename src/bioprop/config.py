"""Typed configs and registries.

Every factory in bioprop (``create_model``, ``create_rule``, ``create_dataset``) maps a name to a
builder and a dataclass config. Keyword arguments are checked against the dataclass fields: an
unknown or misspelled key is a :class:`ConfigError` that names the valid keys, never silently
ignored (TorchDEQ and many paper repositories ignore unknown keys; we do not).

This module uses nothing else of bioprop.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Tuple, Type, TypeVar

__all__ = ["ConfigError", "Registry", "from_dict", "to_dict", "describe_fields"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config names an unknown key, has a value of the wrong type, or names an unknown entry."""


def _suggest(key: str, valid: List[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp`` (simple types only)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin in (tuple, Tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in value)
            if args and len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args or [Any] * len(value)))
        inner = args[0] if args else Any
        return [_coerce(v, inner, where) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: Type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and coercing simple types.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 0.1
    >>> from_dict(C, {"lr": 1})
    C(lr=1.0)
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        valid = sorted(fields)
        k = unknown[0]
        raise ConfigError(
            f"unknown config key {prefix}{k!r}{_suggest(k, valid)} for {cls.__name__}; "
            f"valid keys: {', '.join(valid)}"
        )
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-able) representation of a dataclass config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe_fields(cls: type) -> str:
    """``key=default`` summary of a config dataclass (for ``bioprop list``)."""
    parts = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            d = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            d = f.default_factory()  # type: ignore[misc]
        else:
            d = "<required>"
        parts.append(f"{f.name}={d!r}" if not isinstance(d, str) or d == "<required>" else f"{f.name}={d}")
    return ", ".join(parts)


class Registry(Generic[T]):
    """Name -> (builder, config dataclass), as timm's ``create_model`` and TorchDEQ's solvers.

    ``registry.register(name, config_cls, help)`` decorates a builder ``fn(config) -> object``.
    ``registry.create(name, **kwargs)`` validates ``kwargs`` against ``config_cls`` and builds.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Tuple[Callable[[Any], T], type, str]] = {}
        self._returns: Dict[str, type] = {}

    def register(self, name: str, config_cls: type, help: str = "", returns: Optional[type] = None
                 ) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
        """Decorate a builder. ``returns``: the class the builder returns (lets tools ask which
        entries offer a protocol without building them)."""
        def deco(fn: Callable[[Any], T]) -> Callable[[Any], T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = (fn, config_cls, doc)
            if returns is not None:
                self._returns[name] = returns
            return fn

        return deco

    def returns(self, name: str) -> Optional[type]:
        """The class entry ``name`` declares it builds (``None`` if undeclared)."""
        self._lookup(name)
        return self._returns.get(name)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def config_class(self, name: str) -> type:
        return self._lookup(name)[1]

    def help(self, name: str) -> str:
        return self._lookup(name)[2]

    def _lookup(self, name: str) -> Tuple[Callable[[Any], T], type, str]:
        if name not in self._entries:
            valid = self.names()
            raise ConfigError(
                f"unknown {self.kind} {name!r}{_suggest(name, valid)}; available: {', '.join(valid)}"
            )
        return self._entries[name]

    def make_config(self, name: str, **kwargs: Any) -> Any:
        _, cls, _ = self._lookup(name)
        return from_dict(cls, kwargs, where=f"{self.kind}[{name}]")

    def create(self, name: str, config: Optional[Any] = None, **kwargs: Any) -> T:
        fn, cls, _ = self._lookup(name)
        if config is None:
            config = from_dict(cls, kwargs, where=f"{self.kind}[{name}]")
        elif kwargs:
            config = from_dict(cls, {**to_dict(config), **kwargs}, where=f"{self.kind}[{name}]")
        return fn(config)
