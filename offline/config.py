"""Dataclass configs loaded from a YAML recipe with ``key=value`` CLI overrides, validated on load.

Every job declares one dataclass and calls :func:`parse` in its ``main``::

    @dataclass
    class Cfg:
        lr: float = 1e-3
        model: ModelCfg = field(default_factory=ModelCfg)   # nested: override with model.hidden=64
        def validate(self): ...                                # optional; raise ValueError on bad values

    cfg = parse(Cfg, ["--config", "offline/recipes/tiny-arith/x.yaml", "lr=3e-4", "model.hidden=64"])

Rules: unknown keys are errors (a typo must not silently fall back to a default); values are converted to the
field's annotated type (int, float, bool, str, Optional, list, tuple, dict, nested dataclass); CLI values are
parsed as YAML scalars (``true``, ``1e-3``, ``[1, 2]``, ``null``); the CLI wins over the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config dataclass."""


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {errors}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {args}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from e
    return obj


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        node = data.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a mapping")
        data = node
    data[parts[-1]] = value


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from the YAML file at ``path`` (optional) updated by ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return _build(cls, data)


def parse(cls: type[T], argv: list[str] | None = None) -> T:
    """``[--config FILE] [key=value ...]`` (``sys.argv[1:]`` by default) -> a validated ``cls``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    path = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError("--config needs a file")
        path = args[i + 1]
        del args[i : i + 2]
    return load(cls, path, args)


def to_dict(cfg: Any) -> dict:
    """A plain dict of ``cfg`` (for manifests and metric logs)."""
    return dataclasses.asdict(cfg)


def parse_or_exit(cls: type[T], argv: list[str] | None, prog: str) -> T:
    """:func:`parse` for a job's ``main``: a bad recipe or override ends in one line and exit code 2."""
    import sys

    try:
        return parse(cls, argv)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
