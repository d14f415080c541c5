"""Load attrs configs from YAML/TOML files, shipped presets and ``key=value`` overrides.

Only the app turns files and command-line options into config objects (STYLE.md 6).
Every error names the file and the key at fault, so that a typo in a config reads as a
one-line user error instead of a traceback.
"""

from __future__ import annotations

import copy
import tomllib
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import attrs
import yaml

from tapct_app.errors import UserError

__all__ = [
    "apply_overrides",
    "check_value_types",
    "config_to_dict",
    "list_shipped_configs",
    "load_config",
    "read_mapping",
    "shipped_config_path",
    "structure",
]

T = TypeVar("T", bound=attrs.AttrsInstance)


def list_shipped_configs() -> list[str]:
    """Return the names of the config files shipped in ``tapct_app/configs`` (sorted).

    Returns:
        Names without extension, e.g. ``["demo", "tap_b_3d", ...]``.
    """
    folder = resources.files("tapct_app") / "configs"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_config_path(name: str) -> Path:
    """Return the path of a shipped config.

    Args:
        name: Config name (``demo``, ``tap_b_3d``, ...).

    Returns:
        Its path inside the installed package.

    Raises:
        UserError: If no shipped config has that name (the message lists them).
    """
    path = Path(str(resources.files("tapct_app") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise UserError(
            f"unknown config {name!r}: not a file and not one of {list_shipped_configs()}"
        )
    return path


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict.

    Args:
        path: The file, or the name of a shipped config.

    Returns:
        The parsed mapping (empty for an empty file).

    Raises:
        UserError: If the file is missing, unreadable, not a mapping or not valid
            YAML/TOML.
    """
    p = Path(path)
    if not p.exists() and p.suffix == "" and "/" not in str(path):
        p = shipped_config_path(str(path))
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{p}: cannot read config: {_one_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a mapping, got {type(data).__name__}")
    return data


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a mapping.

    Args:
        data: The mapping read from a file.
        overrides: Strings such as ``optim.base_lr=1e-3`` or
            ``crops.global_crops_size=[8,64,64]``.

    Returns:
        A new mapping with the overrides applied.

    Raises:
        UserError: If an override has no ``=`` or an empty key.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad override {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UserError(f"bad override {item!r}: {_one_line(exc)}") from exc
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"bad override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def _is_attrs_type(tp: Any) -> TypeGuard[type[attrs.AttrsInstance]]:
    return isinstance(tp, type) and attrs.has(tp)


def structure(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build an attrs class from a (nested) mapping, recursing into attrs-typed fields.

    Args:
        cls: An attrs class such as :class:`~tapct_app.train.config.PretrainConfig`.
        data: Its fields as a mapping (lists are fine where tuples are expected: the
            fields' converters turn them into tuples).
        where: A label for error messages (the file name and section).

    Returns:
        The config object, validated by its own validators.

    Raises:
        UserError: On an unknown key, a value of the wrong type or one the class rejects;
            the message names ``where`` and the key.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints.get(name)
        if _is_attrs_type(tp):
            kwargs[name] = structure(tp, value or {}, f"{where}.{name}")
        else:
            _check_scalar(tp, value, f"{where}.{name}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {_one_line(exc)}") from exc


_SCALARS: dict[type, tuple[str, tuple[type, ...]]] = {
    bool: ("true or false", (bool,)),
    int: ("an integer", (int,)),  # bool is an int (a switch such as grad_checkpointing)
    float: ("a number", (int, float)),
}


def _check_scalar(tp: Any, value: Any, where: str) -> None:
    """Refuse a value of the wrong kind for a numeric field (``int``, ``float``, ``bool``,
    or one of them ``| None``) with a message naming the key and the value.

    Other annotations (tuples, mappings, literals) are left to the class's converters and
    validators.

    Raises:
        UserError: ``"<where>: expected an integer, got 'abc'"``.
    """
    args = typing.get_args(tp)
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)] if args else [tp]
    if len(kinds) != 1 or kinds[0] not in _SCALARS or (optional and value is None):
        return
    kind = kinds[0]
    what, accepted = _SCALARS[kind]
    if not isinstance(value, accepted):
        raise UserError(f"{where}: expected {what}, got {value!r}")


def check_value_types(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Check the numeric values of a raw mapping against an attrs class's field types.

    For the sections passed whole to a library config (``optim``, ``objective``): a value
    such as ``--set optim.base_lr=abc`` is refused naming the key, before the library's
    own validators compare it with a number.

    Args:
        cls: The attrs class the mapping is for (e.g. ``tapct_ssl.OptimConfig``).
        data: The section.
        where: A label for the message (``"config section 'optim'"``).

    Raises:
        UserError: ``"<where>.<key>: expected a number, got 'abc'"``, or ``"<where>:
            unknown key(s) [...]; known: [...]"`` (as the app's own sections).
    """
    if not attrs.has(cls):
        return
    known = {f.name for f in attrs.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in hints:
            _check_scalar(hints[key], value, f"{where}.{key}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Turn an attrs config into plain Python values (dicts, lists, numbers, strings).

    Args:
        config: An attrs instance.

    Returns:
        A JSON/YAML-able dict (tuples become lists), safe for
        ``torch.load(weights_only=True)``.
    """
    return _plain(attrs.asdict(config, recurse=True))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    updates: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Load a config: ``base`` <- file <- ``updates`` (CLI options) <- ``overrides``.

    Args:
        cls: The attrs config class.
        path: A YAML/TOML file or a shipped config name; None uses the class defaults.
        base: A mapping applied before the file.
        updates: A nested mapping applied after the file (typed CLI options).
        overrides: ``section.key=value`` strings applied last.

    Returns:
        The validated config.

    Raises:
        UserError: If the file cannot be read or a value is rejected.
    """
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if path is not None:
        data = _merge(data, read_mapping(path))
        where = str(path)
    if updates:
        data = _merge(data, updates)
    data = apply_overrides(data, overrides)
    return structure(cls, data, where)
