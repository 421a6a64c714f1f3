"""Offline validation of manifests against the CRD's own schema and CEL rules.

Mirrors what the API server checks at admission (types, bounds, patterns, enums, required and
unknown fields, list-map keys, `x-kubernetes-validations`), so `datamix validate` refuses what
`kubectl apply` would refuse, with the same field paths; then adds the checks only the
operator can make (model settings, parallelism).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from datamix.errors import UserError
from datamix.experiment import build_run_spec
from datamix.schema import Schema, crd_manifest
from datamix.sweep_schema import SWEEP_KIND, final_name, sweep_crd_manifest, trial_name


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def root_schema() -> Schema:
    schema: Schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@cache
def sweep_root_schema() -> Schema:
    schema: Schema = sweep_crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def validate_manifest(manifest: dict[str, Any]) -> list[Problem]:
    """All problems of a manifest (an experiment or a sweep); empty when the API server and the
    operator would accept it (a sweep's edits, checked by transition rules, are not judged)."""
    problems: list[Problem] = []
    meta = manifest.get("metadata")
    what = "sweep" if manifest.get("kind") == SWEEP_KIND else "experiment"
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        problems.append(Problem("metadata.name", f"Required value: give the {what} a name"))
        return problems
    problems.extend(schema_problems(manifest))
    if not problems:
        for prefix, experiment in _experiments_to_build(manifest):
            try:
                build_run_spec(experiment)
            except UserError as err:
                path, _, message = str(err).partition(": ")
                problems.append(Problem(prefix + path.removeprefix("spec.") if prefix else path, message))
    return problems


def schema_problems(manifest: dict[str, Any]) -> list[Problem]:
    """What the API server would refuse at admission: the schema and its CEL rules (of an
    experiment, or of a sweep)."""
    problems: list[Problem] = []
    root = sweep_root_schema() if manifest.get("kind") == SWEEP_KIND else root_schema()
    _check({k: v for k, v in manifest.items() if k != "status"}, root, "", problems)
    return problems


def _experiments_to_build(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field prefix, experiment manifest) whose run spec must build: the manifest itself, or a
    sweep's trials (the prior's weights stand for every trial's) and its final run."""
    if manifest.get("kind") != SWEEP_KIND:
        return [("", manifest)]
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    trial = {"metadata": {"name": trial_name(name, 0)}, "spec": spec["experiment"]}
    out = [("spec.experiment.", trial)]
    if "final" in spec:
        final = {"metadata": {"name": final_name(name)}, "spec": {**spec["experiment"], **spec["final"]}}
        out.append(("spec.final.", final))
    return out


def _check(value: Any, schema: Schema, path: str, problems: list[Problem]) -> None:
    if not _check_type(value, schema, path, problems):
        return
    if isinstance(value, dict):
        _check_object(value, schema, path, problems)
    elif isinstance(value, list):
        _check_array(value, schema, path, problems)
    else:
        _check_scalar(value, schema, path, problems)
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: judges an edit, and a file is not one
        if not _rule_holds(rule["rule"], value, schema):
            where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
            problems.append(Problem(where.lstrip(".") or "<root>", f"Invalid value: {rule['message']}"))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _check_type(value: Any, schema: Schema, path: str, problems: list[Problem]) -> bool:
    where = path.lstrip(".") or "<root>"
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema:
        return True
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            problems.append(Problem(where, f"Invalid value: {value!r}: must be an integer or a string"))
            return False
        return True
    expected = schema.get("type")
    actual = _type_name(value)
    ok = actual == expected or (expected == "number" and actual == "integer")
    if not ok:
        problems.append(Problem(where, f"Invalid value: {_show(value)}: must be of type {expected}"))
    return ok


def _check_object(value: dict[str, Any], schema: Schema, path: str, problems: list[Problem]) -> None:
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for name in schema.get("required", []):
        if name not in value:
            problems.append(Problem(f"{path}.{name}".lstrip("."), "Required value"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        problems.append(
            Problem(path.lstrip("."), f"Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        )
    for key, item in value.items():
        child = f"{path}.{key}"
        if props is not None and key in props:
            _check(item, props[key], child, problems)
        elif isinstance(extra, dict):
            _check(item, extra, child, problems)
        elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata":
            problems.append(
                Problem(child.lstrip("."), f'unknown field "{child.lstrip(".")}"; remove it or check the spelling')
            )


def _check_array(value: list[Any], schema: Schema, path: str, problems: list[Problem]) -> None:
    where = path.lstrip(".")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(Problem(where, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(Problem(where, f"Invalid value: {len(value)}: must have at least {schema['minItems']} items"))
    for i, item in enumerate(value):
        _check(item, schema["items"], f"{path}[{i}]", problems)
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") == "map" and keys:
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                shown = ", ".join(f'"{k}":{_show(item.get(k))}' for k in keys)
                problems.append(Problem(f"{where}[{i}]", f"Duplicate value: map[string]interface {{}}{{{shown}}}"))
            seen.add(key)


def _check_scalar(value: Any, schema: Schema, path: str, problems: list[Problem]) -> None:
    where = path.lstrip(".")
    shown = _show(value)
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{e}"' for e in schema["enum"])
        problems.append(Problem(where, f"Unsupported value: {shown}: supported values: {allowed}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem(where, f"Invalid value: {shown}: must be a finite number"))
        if "minimum" in schema:
            low = schema["minimum"]
            if schema.get("exclusiveMinimum") and value <= low:
                problems.append(Problem(where, f"Invalid value: {shown}: {where} in body should be greater than {low}"))
            elif value < low:
                problems.append(
                    Problem(where, f"Invalid value: {shown}: {where} in body should be greater than or equal to {low}")
                )
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(
                Problem(
                    where,
                    f"Invalid value: {shown}: {where} in body should be less than or equal to {schema['maximum']}",
                )
            )
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(Problem(where, f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                Problem(
                    where,
                    f"Invalid value: {shown}: {where} in body should be at least {schema['minLength']} chars long",
                )
            )
        pattern = schema.get("pattern")
        if pattern and not re.search(pattern, value):
            problems.append(Problem(where, f"Invalid value: {shown}: {where} in body should match '{pattern}'"))


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _rule_holds(rule: str, value: Any, schema: Schema) -> bool:
    try:
        return bool(_program(rule).evaluate({"self": _to_cel(value, schema)}))
    except CELEvalError:
        # A rule that cannot be evaluated (e.g. a field of the wrong type, reported already)
        # is not reported twice.
        return True


def _to_cel(value: Any, schema: Schema | None) -> Any:
    """Like the API server: values of `type: number` are doubles in CEL even when written as 1."""
    if schema is None:
        return json_to_cel(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(k): _to_cel(v, props.get(k, extra if isinstance(extra, dict) else None))
                for k, v in value.items()
            }
        )
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(v, schema.get("items")) for v in value])
    if schema.get("type") == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    return json_to_cel(value)
