"""Configuration: one TOML file, environment overrides, strict validation at start.

Schema = dataclasses (the top-level one is ``common.settings.Config``). A field
without a default is required. ``field(metadata={"doc": ...})`` documents a key.

Environment overrides: ``VMBACKUP_<SECTION>__<KEY>`` (double underscore between
levels, list items by index: ``VMBACKUP_VCENTERS__0__HOST``). Values are parsed for the
target type (TOML syntax is accepted for lists: ``["a", "b"]``).

Secrets (:class:`Secret`) come from a file (``{file = "/run/secrets/x"}``, e.g. a
Kubernetes Secret), from an environment variable (``{env = "NAME"}``) or inline.

Any problem raises :class:`ConfigError` whose text is one line naming the key and
the file; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

ENV_PREFIX = "VMBACKUP_"

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the source."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value plus where it came from (never printed)."""

    value: str
    source: str

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    __str__ = __repr__


def _field_doc(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("doc", ""))


def _type_label(tp: Any) -> str:
    if tp is Secret:
        return "secret"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_label(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_label(get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "nothing"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


class _Loader:
    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env

    def fail(self, key: str, what: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key}: {what}")

    def convert(self, value: Any, tp: Any, key: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            alts = get_args(tp)
            if value is None and type(None) in alts:
                return None
            for alt in alts:
                if alt is type(None):
                    continue
                try:
                    return self.convert(value, alt, key)
                except ConfigError:
                    continue
            self.fail(key, f"expected {_type_label(tp)}, got {type(value).__name__}")
        if tp is Any:
            return value
        if tp is Secret:
            return self.secret(value, key)
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false, got {type(value).__name__}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected an integer, got {type(value).__name__}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(key, f"expected a number, got {type(value).__name__}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(key, f"expected a string, got {type(value).__name__}")
            return value
        if tp is Path:
            if not isinstance(value, str):
                self.fail(key, f"expected a path string, got {type(value).__name__}")
            return Path(value)
        if origin is list:
            (item,) = get_args(tp)
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {type(value).__name__}")
            return [self.convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            kt, vt = get_args(tp)
            if not isinstance(value, dict):
                self.fail(key, f"expected a table, got {type(value).__name__}")
            return {
                self.convert(k, kt, key): self.convert(v, vt, f"{key}.{k}")
                for k, v in value.items()
            }
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                self.fail(key, f"expected a table, got {type(value).__name__}")
            return self.build(tp, value, key)
        self.fail(key, f"unsupported type {tp}")  # schema bug

    def secret(self, value: Any, key: str) -> Secret:
        if isinstance(value, str):
            return Secret(value, "inline")
        if isinstance(value, dict) and len(value) == 1:
            ((kind, ref),) = value.items()
            if kind == "file" and isinstance(ref, str):
                try:
                    text = Path(ref).read_text(encoding="utf-8")
                except OSError as exc:
                    self.fail(key, f"cannot read secret file {ref}: {exc.strerror}")
                return Secret(text.rstrip("\r\n"), f"file {ref}")
            if kind == "env" and isinstance(ref, str):
                if ref not in self.env:
                    self.fail(key, f"environment variable {ref} is not set")
                return Secret(self.env[ref], f"env {ref}")
        self.fail(key, 'expected a string, {file = "PATH"} or {env = "NAME"}')

    def build(self, cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for k in data:
            if k not in fields:
                where = f"{prefix}.{k}" if prefix else k
                self.fail(where, "unknown key")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            where = f"{prefix}.{name}" if prefix else name
            if name in data:
                kwargs[name] = self.convert(data[name], hints[name], where)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(where, "required key is missing")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            self.fail(prefix or "(top level)", str(exc))


def _parse_env_value(raw: str) -> Any:
    """Parse an override: TOML literal when it is one (numbers, booleans, lists), else text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Merge ``VMBACKUP_A__B__C=value`` variables into the parsed TOML tree."""
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt_is_index = path[i + 1].isdigit()
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append({})
                node = node[idx]
                continue
            if part not in node:
                node[part] = [] if nxt_is_index else {}
            node = node[part]
        last = path[-1]
        value = _parse_env_value(raw)
        if isinstance(node, list):
            idx = int(last)
            while len(node) <= idx:
                node.append({})
            node[idx] = value
        else:
            node[last] = value
    return data


def load(cls: type[T], path: str | Path | None, env: Mapping[str, str] | None = None) -> T:
    """Read, override from the environment and validate a config of schema ``cls``."""
    env = os.environ if env is None else env
    source = str(path) if path else "(no config file)"
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    data = apply_env_overrides(data, env)
    return typing.cast(T, _Loader(source, env).build(cls, data, ""))


def describe(cls: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of a schema as (key, type, default, doc) rows, for docs and --help."""
    rows: list[tuple[str, str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = get_args(tp)[0] if get_origin(tp) is list and get_args(tp) else None
        if dataclasses.is_dataclass(tp) and tp is not Secret:
            rows.extend(describe(tp, f"{key}."))
            continue
        if inner is not None and dataclasses.is_dataclass(inner):
            rows.extend(describe(inner, f"{key}[]."))
            continue
        if isinstance(f.default, Secret):
            default = repr(f.default.value)
        elif f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, _type_label(tp), default, _field_doc(f)))
    return rows
