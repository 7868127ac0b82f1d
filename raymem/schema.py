"""The study file's reference, generated from its schema (raymem/config.py), so it cannot drift.

`raymem schema` prints it; docs/study-reference.md is the same text, checked by a test.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from raymem.config import Study, UserTask, section_model

HEADER = """# Study file reference

Every key of a study file, generated from raymem's schema (`raymem schema`). Unknown keys
are errors. Defaults are the published settings; `null` is YAML's "none".

| key | type | default | meaning |
|---|---|---|---|
"""


def type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:  # a task entry: a registry name or a user task
        return {str: "registry name", UserTask: "user task (see tasks[])"}.get(args[0]) or type_name(args[0])
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return f"pair of {type_name(args[0])}"
    if origin is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}
    found = []
    for item in field.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "null"
    return f"`{value}`".replace("'", "")


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key of `model`, sections recursed."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append((key, type_name(field.annotation) + _bounds(field), _default(field), field.description or ""))
        if (section := section_model(field.annotation)) is not None:
            out += rows(section, key + ".")
    return out


def all_rows() -> list[tuple[str, str, str, str]]:
    return rows(Study) + rows(UserTask, "tasks[].")


def reference() -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    return HEADER + "".join(f"| `{k}` | {escape(t)} | {escape(d)} | {escape(m)} |\n" for k, t, d, m in all_rows())
