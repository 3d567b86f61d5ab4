"""Command-line options generated from frozen config dataclasses: one source of truth for both halves.

Standard library only, so `extract/` (torch) and `mammosae_jax/cli/` (jax) build their flags the same way.

Each field becomes `--field-name` (or the flag given in `flags`), typed by its annotation, with its
default and its docstring (the string literal under the field) as the `--help` text.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Iterable, Mapping

MISSING = dataclasses.MISSING


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literals that follow the fields in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _scalar_type(annotation: Any) -> type:
    """int / float / str / bool of an annotation such as `int | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def flag_of(name: str, flags: Mapping[str, str] | None = None) -> str:
    return (flags or {}).get(name, "--" + name.replace("_", "-"))


def add_field(parser: Any, cls: type, name: str, *, flag: str | None = None, **kwargs: Any) -> None:
    """Add the option of one field of `cls` (`kwargs` override type, default, help, ...)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    kind = _scalar_type(typing.get_type_hints(cls)[name])
    default = f.default if f.default is not MISSING else MISSING
    opts: dict[str, Any] = {"dest": name}
    if kind is bool:
        opts["action"] = argparse.BooleanOptionalAction
    else:
        opts["type"] = kind
    if default is not MISSING:
        opts["default"] = default
    opts.update(kwargs)
    if "help" not in kwargs:
        doc = field_docs(cls).get(name, "")
        shown = opts.get("default", MISSING)
        opts["help"] = doc.replace("%", "%%") + ("" if shown in (MISSING, None) or opts.get("required") else f" (default {shown})")
    parser.add_argument(flag or flag_of(name), **opts)


def add_config_options(parser: Any, cls: type, *, skip: Iterable[str] = (), flags: Mapping[str, str] | None = None,
                       choices: Mapping[str, Iterable[Any]] | None = None,
                       overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """One option per field of `cls` except `skip`; the names of the fields added."""
    added = []
    for f in dataclasses.fields(cls):
        if f.name in set(skip):
            continue
        kwargs = dict((overrides or {}).get(f.name, {}))
        if choices and f.name in choices:
            kwargs.setdefault("choices", tuple(choices[f.name]))
        add_field(parser, cls, f.name, flag=flag_of(f.name, flags), **kwargs)
        added.append(f.name)
    return added


def config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """`cls` from the parsed options of its fields (those present in `args`), then `values`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **values})
