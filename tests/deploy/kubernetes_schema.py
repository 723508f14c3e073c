"""Kubernetes objects checked offline against the API's schema, as the official client's models carry it.

    problems(obj)        # [] when every field is known, of the right type, and none required is missing

kubernetes_asyncio's models are generated from the Kubernetes OpenAPI document: each knows its
fields (``attribute_map``), their types (``openapi_types``) and, in its constructor, which are
required. Walking an object against them finds what ``kubectl apply --validate=false`` would let
through (a misspelt or misplaced field is dropped silently) and what a server would refuse (a
string where a number goes, a container without a name). It is no API server: admission, defaults
and cross-field rules (a selector matching a template's labels...) are not checked here.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes_asyncio.client import models

#: apiVersion -> the models' version prefix (autoscaling/v2 -> V2, apps/v1 -> V1).
PRIMITIVES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
                                           "datetime": (str,), "date": (str,)}


def model_of(obj: dict[str, Any]) -> type:
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    name = version[:1].upper() + version[1:] + str(obj.get("kind", ""))
    model = getattr(models, name, None)
    if model is None:
        raise ValueError(f"no model {name} for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r}")
    return model  # type: ignore[no-any-return]


def problems(obj: dict[str, Any]) -> list[str]:
    found: list[str] = []
    _check(obj, model_of(obj), f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}", found)
    return found


def _check(value: Any, kind: Any, where: str, found: list[str]) -> None:
    if isinstance(kind, str):
        if kind == "object":  # IntOrString, quantities, free JSON
            return
        if kind in PRIMITIVES:
            if isinstance(value, bool) and kind != "bool" or not isinstance(value, PRIMITIVES[kind]):
                found.append(f"{where}: {value!r} is not {kind}")
            return
        if match := re.fullmatch(r"list\[(.*)\]", kind):
            if not isinstance(value, list):
                found.append(f"{where}: not a list")
                return
            for index, item in enumerate(value):
                _check(item, match.group(1), f"{where}[{index}]", found)
            return
        if match := re.fullmatch(r"dict\(([^,]*), (.*)\)", kind):
            if not isinstance(value, dict):
                found.append(f"{where}: not a mapping")
                return
            for key, item in value.items():
                _check(item, match.group(2), f"{where}.{key}", found)
            return
        kind = getattr(models, kind)
    if not isinstance(value, dict):
        found.append(f"{where}: not an object ({kind.__name__})")
        return
    fields = {json_name: name for name, json_name in kind.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            found.append(f"{where}: unknown field {key!r} in {kind.__name__}")
        else:
            _check(item, kind.openapi_types[fields[key]], f"{where}.{key}", found)
    try:  # the constructor refuses a required field left out
        kind(**{fields[key]: item for key, item in value.items() if key in fields})
    except ValueError as exc:
        found.append(f"{where}: {exc}")
