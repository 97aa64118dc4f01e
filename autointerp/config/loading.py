"""YAML to the config dataclasses and back, strictly: unknown keys (with the nearest known one),
wrong types, dotted command-line overrides, the commented defaults, and config diffs.

Kept hand-written rather than pydantic (installed): pydantic's lax mode accepts ``"yes"`` for a
bool and names no nearest key for a typo, and neither mode reads the comma-separated lists of the
command line (``--explain.explainers a,b``) nor a number for a string field (``feature_pages: 200``)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from autointerp.config.sections import ConfigError, RunConfig


# ------------------------------------------------------------------------ (de)serialising
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints are accepted for floats; a
    comma-separated string is accepted for a list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. report.feature_pages: 200
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {(where + '.' if where else '') + near[0]!r}?" if near else f"; known: {', '.join(known)}"
    return ConfigError(f"unknown config field {(where + '.' if where else '') + key!r}{hint}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (see module docstring)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, comments: bool = False) -> str:
    """YAML text of ``cfg``; with ``comments``, each field is preceded by its docstring."""
    if not comments:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return "\n".join(_commented(cfg, 0)) + "\n"


def _commented(obj: Any, indent: int) -> list[str]:
    pad = "  " * indent
    docs = _field_docs(type(obj))
    lines = []
    if indent == 0 and type(obj).__doc__:
        lines.append(f"# {type(obj).__doc__.strip().splitlines()[0]}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append("")
            lines.append(f"{pad}# {docs.get(f.name) or type(value).__doc__.strip().splitlines()[0]}")
            lines.append(f"{pad}{f.name}:")
            lines.extend(_commented(value, indent + 1))
            continue
        for line in textwrap.wrap(docs.get(f.name, ""), 96 - len(pad)):
            lines.append(f"{pad}# {line}")
        text = yaml.safe_dump({f.name: value}, default_flow_style=True, sort_keys=False).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        lines.append(f"{pad}{text}")
    return lines


def _set_path(data: dict, path: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``path`` ``a.b``, checking names against RunConfig."""
    cls: Any = RunConfig
    parts = path.split(".")
    node = data
    walked = []
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown(part, names, ".".join(walked))
        walked.append(part)
        tp = _hints(cls)[part]
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{'.'.join(walked)} is a value, not a section: cannot set {path}")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            cls = tp


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.k", "64", "--cache.corpus=x.txt"]`` -> ``{"train.k": 64, "cache.corpus": "x.txt"}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.field VALUE")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} needs a value")
            raw = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(source: str | Path | dict | list | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The :class:`RunConfig` of a YAML file (or text, or mapping; ``None``: the defaults) with
    dotted ``overrides`` applied on top."""
    if source is None:
        data: Any = {}
    elif isinstance(source, (dict, list)):
        data = source
    else:
        is_path = isinstance(source, Path) or "\n" not in str(source)
        if is_path and not Path(source).is_file():
            raise ConfigError(f"config file {source} not found")
        text = Path(source).read_text() if is_path else str(source)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"a config is a mapping of sections, got {type(data).__name__}")
    data = _deepcopy(data)
    for path, value in (overrides or {}).items():
        _set_path(data, path, value)
    return from_dict(RunConfig, data)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (``to_dict`` form)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, path + "."))
        elif a != b:
            out.append(path)
    return out
