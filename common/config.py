"""Configuration: one TOML file, environment overrides, strict validation at start.

Schema = dataclasses (the top-level one is the application's ``Config``). A field without
a default is required. ``field(metadata={"doc": ...})`` documents a key.

Environment overrides: ``VMBACKUP_<SECTION>__<KEY>`` (double underscore between
levels, list items by index: ``VMBACKUP_VCENTERS__0__HOST``). Values are parsed for the
target type (TOML syntax is accepted for lists: ``["a", "b"]``).

Secrets (:class:`Secret`) come from a file (``{file = "/run/secrets/x"}``, e.g. a
Kubernetes Secret), from an environment variable (``{env = "NAME"}``) or inline.

Validation reports every problem at once, each as a :class:`Problem` naming its key path
(``policies[1].window.start``): wrong types, unknown and missing keys, and what each
table's ``__post_init__`` finds (several, through ``common.config_problems.Checks``). A table
that is wrong stands in for its default while the rest of the file is checked; a
problem that depends on such a value is left out (it would be about the default, not
the file). :func:`check` returns the problems, :func:`load` raises :class:`ConfigError`
with all of them; the CLI prints one line each and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

from common.config_problems import FieldErrors, FieldProblem, Problem

ENV_PREFIX = "VMBACKUP_"

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration: every problem found, each naming its key; one line each."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


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


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _within(key: str, outer: str) -> bool:
    """Whether ``key`` is ``outer`` or a key inside it (``a.b[0]`` is inside ``a.b``)."""
    return key == outer or key.startswith((f"{outer}.", f"{outer}["))


class _Bad(Exception):
    """A value could not be converted; its problems are recorded already."""


class _Loader:
    """Converts a parsed tree to the schema, recording every problem (never stopping)."""

    def __init__(self, env: Mapping[str, str], read_secret: Callable[[str], bool]) -> None:
        self.env = env
        self.read_secret = read_secret
        self.problems: list[Problem] = []
        # keys whose value is not the file's (wrong, left out, or a default standing in)
        self.tainted: list[str] = []

    def fail(self, key: str, what: str) -> typing.NoReturn:
        self.problems.append(Problem(key, what))
        raise _Bad

    def dirty(self, key: str) -> bool:
        """Whether a value at, inside or around ``key`` is not the file's own."""
        if not key:
            return bool(self.tainted)
        return any(_within(key, t) or _within(t, key) for t in self.tainted)

    def convert(self, value: Any, tp: Any, key: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            alts = get_args(tp)
            if value is None and type(None) in alts:
                return None
            others = [a for a in alts if a is not type(None)]
            if len(others) == 1:  # "X or nothing": X's own problem says more
                return self.convert(value, others[0], key)
            for alt in others:
                mark = (len(self.problems), len(self.tainted))
                try:
                    return self.convert(value, alt, key)
                except _Bad:
                    del self.problems[mark[0] :], self.tainted[mark[1] :]
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
            out: list[Any] = []
            bad = False
            for i, v in enumerate(value):  # every item, so that each one's problems show
                try:
                    out.append(self.convert(v, item, f"{key}[{i}]"))
                except _Bad:
                    bad = True
            if bad:
                raise _Bad
            return out
        if origin is dict:
            kt, vt = get_args(tp)
            if not isinstance(value, dict):
                self.fail(key, f"expected a table, got {type(value).__name__}")
            table: dict[Any, Any] = {}
            bad = False
            for k, v in value.items():
                try:
                    table[self.convert(k, kt, key)] = self.convert(v, vt, f"{key}.{k}")
                except _Bad:
                    bad = True
            if bad:
                raise _Bad
            return table
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
            if kind in ("file", "env") and isinstance(ref, str) and not self.read_secret(key):
                # where the role that reads it runs; the form is right, its value unknown
                return Secret("", f"unread {kind} {ref}")
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
                self.problems.append(Problem(_join(prefix, k), "unknown key"))
                self.tainted.append(_join(prefix, k))
        kwargs: dict[str, Any] = {}
        buildable = True
        for name, f in fields.items():
            where = _join(prefix, name)
            has_default = not (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if name in data:
                try:
                    kwargs[name] = self.convert(data[name], hints[name], where)
                except _Bad:
                    # the default stands in so that the table's other checks still run
                    self.tainted.append(where)
                    buildable = buildable and has_default
            elif not has_default:
                self.problems.append(Problem(where, "required key is missing"))
                buildable = False
        if not buildable:
            raise _Bad
        try:
            return cls(**kwargs)
        except FieldErrors as exc:
            for p in exc.problems:
                deps = [_join(prefix, d) for d in (p.depends or (p.key,))]
                if not any(self.dirty(d) for d in deps):
                    self.problems.append(Problem(_join(prefix, p.key), p.error))
        except (ValueError, TypeError) as exc:
            if not self.dirty(prefix):
                self.problems.append(Problem(prefix, str(exc)))
        raise _Bad


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


def read_every_secret(_key: str) -> bool:
    return True


@dataclass(frozen=True)
class Checked(Generic[T]):
    """What :func:`check` found: the config when it has no problem, and every problem."""

    config: T | None
    problems: list[Problem]


def check(
    cls: type[T],
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    read_secret: Callable[[str], bool] = read_every_secret,
    extra: Callable[[T], Iterable[FieldProblem]] | None = None,
) -> Checked[T]:
    """Read, override from the environment and validate a config of schema ``cls``,
    finding every problem. ``read_secret(key)`` says which secrets to read (the others'
    form is checked, their value left empty). ``extra`` finds what a table cannot see
    alone (references between sections, what a role needs), as FieldProblems with full
    keys; those that depend on a key already found wrong are left out."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            return Checked(None, [Problem("", "file not found")])
        except OSError as exc:
            return Checked(None, [Problem("", f"cannot read: {exc.strerror}")])
        except tomllib.TOMLDecodeError as exc:
            return Checked(None, [Problem("", f"not valid TOML: {exc}")])
    data = apply_env_overrides(data, env)
    loader = _Loader(env, read_secret)
    try:
        cfg: T | None = loader.build(cls, data, "")
    except _Bad:
        cfg = None
    if extra is not None and cfg is not None:
        # cfg may hold defaults in place of what is wrong: what depends on them is left out
        for fp in extra(cfg):
            if not any(loader.dirty(k) for k in fp.depends or (fp.key,)):
                loader.problems.append(Problem(fp.key, fp.error))
    problems = sorted(loader.problems, key=lambda p: _schema_order(cls, p.key))
    return Checked(cfg if not problems else None, problems)


def _schema_order(cls: Any, key: str) -> tuple[int, ...]:
    """Where ``key`` is in the schema: problems are listed in the order of the keys in it
    (list items by index, unknown keys after the known ones of their table)."""
    out: list[int] = []
    tp: Any = cls
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        while get_origin(tp) in (Union, types.UnionType):  # "X or nothing": X
            tp = next(a for a in get_args(tp) if a is not type(None))
        if part.startswith("["):
            out.append(int(part[1:-1]))
            tp = get_args(tp)[0] if get_origin(tp) is list else Any
        elif dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            out.append(names.index(part) if part in names else len(names))
            tp = typing.get_type_hints(tp).get(part, Any)
        else:  # a table's own key (dict): in the file's order (the sort is stable)
            out.append(0)
            tp = get_args(tp)[1] if get_origin(tp) is dict else Any
    return tuple(out)


def load(
    cls: type[T],
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    read_secret: Callable[[str], bool] = read_every_secret,
    extra: Callable[[T], Iterable[FieldProblem]] | None = None,
) -> T:
    """:func:`check`, raising :class:`ConfigError` with every problem when there is any."""
    found = check(cls, path, env, read_secret=read_secret, extra=extra)
    if found.config is None:
        raise ConfigError(str(path) if path else "(no config file)", found.problems)
    return found.config


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
