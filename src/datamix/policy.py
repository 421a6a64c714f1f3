"""The cluster's DataMix policy: what a tenant who may create experiments may make the operator do.

One set of CEL rules, two enforcers:
- the API server, at admission: the chart's ValidatingAdmissionPolicy is generated from
  `admission_policy_spec()` (`datamix crd --write`; a test fails when the chart's copy is stale);
- the operator, before it creates anything (for clusters where the admission policy is not
  installed): `violations()` evaluates the same expressions with cel-python.

Both read the same parameters: the chart's policy ConfigMap (`paramKind: ConfigMap`), rendered
from the `policy` values; its keys are `PolicyParams`' fields. Lists are comma-separated strings,
because a ConfigMap's values are strings.

One rule cannot be evaluated by the operator: whether the *requesting user* may `get` a Secret
the experiment references (the CEL `authorizer`); the operator does not know who created the
object. Its stand-in is `secretReferences`: `CheckedAtAdmission` (the chart installed the
admission policy, which checked the user), `Refused` (no admission check: the operator refuses
every Secret reference) or `Allowed` (no admission check, and the platform team trusts every
tenant with every Secret of their namespace).

This module imports neither kopf nor kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from datamix import GROUP, PLURAL

# Label and annotation prefixes no experiment may set on its pods, whatever the parameters say:
# Kubernetes' own, the operator's (they select a run's pods), Kueue's (admission and quotas),
# Kubeflow's (the training-operator finds replicas by them) and Istio's sidecar switches.
# A prefix also covers its subdomains (app.kubernetes.io/, training.kubeflow.org/).
BUILTIN_RESERVED_PREFIXES: tuple[str, ...] = (
    "kubernetes.io/",
    "k8s.io/",
    f"{GROUP}/",
    "kueue.x-k8s.io/",
    "sidecar.istio.io/",
    "kubeflow.org/",
)
SECRET_REFERENCE_MODES = ("CheckedAtAdmission", "Refused", "Allowed")
VOLUME_SOURCES = ("persistentVolumeClaim", "nfs", "hostPath")


@dataclass(frozen=True)
class PolicyParams:
    """The policy's parameters: the keys of the chart's policy ConfigMap. Defaults are the chart's."""

    volumeSources: tuple[str, ...] = ("persistentVolumeClaim",)
    """Volume sources allowed for spec.datasets.volume and spec.output.volume."""
    hostPathPrefixes: tuple[str, ...] = ()
    """Directories a hostPath volume may be (or be under)."""
    nfsServers: tuple[str, ...] = ()
    """NFS servers an nfs volume may name."""
    imagePrefixes: tuple[str, ...] = ()
    """Image repositories (`repo` allows `repo:tag` and `repo@digest`) or prefixes ending in `/`."""
    tolerationKeys: tuple[str, ...] = ("nvidia.com/gpu",)
    """Taint keys the pods may tolerate."""
    priorityClassNames: tuple[str, ...] = ()
    """PriorityClasses the pods may use."""
    reservedPrefixes: tuple[str, ...] = ()
    """Label and annotation prefixes reserved in addition to BUILTIN_RESERVED_PREFIXES."""
    secretReferences: str = "Refused"
    """CheckedAtAdmission, Refused or Allowed: see the module's docstring."""

    @classmethod
    def from_configmap_data(cls, data: Mapping[str, str]) -> PolicyParams:
        """Parameters from a ConfigMap's `data`; a missing key keeps its default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            if not isinstance(raw, str):
                raise ValueError(f"policy parameter {f.name} must be a string, not {type(raw).__name__}")
            values[f.name] = raw.strip() if f.name == "secretReferences" else _split(raw)
        params = cls(**values)
        if params.secretReferences not in SECRET_REFERENCE_MODES:
            raise ValueError(
                f"policy parameter secretReferences {params.secretReferences!r}: "
                f"expected one of {', '.join(SECRET_REFERENCE_MODES)}"
            )
        bad = sorted(set(params.volumeSources) - set(VOLUME_SOURCES))
        if bad:
            raise ValueError(
                f"policy parameter volumeSources: unknown {', '.join(bad)}; known: {', '.join(VOLUME_SOURCES)}"
            )
        return params

    def configmap_data(self) -> dict[str, str]:
        return {
            f.name: (value if isinstance(value, str) else ",".join(value))
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }


def _split(raw: str) -> tuple[str, ...]:
    # The same as the CEL variables below: split on commas, trim, drop empty items.
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Validation:
    """One rule: `expression` must hold; `message` (a CEL string expression) names the field.

    `operator_expression` replaces `expression` where the operator cannot evaluate it (the
    authorizer)."""

    name: str
    field: str
    expression: str
    message: str
    operator_expression: str | None = None


def _param_list(key: str) -> str:
    return (
        f"has(params.data) && '{key}' in params.data ? "
        f"params.data['{key}'].split(',').map(s, s.trim()).filter(s, s != '') : []"
    )


def _as_dir(expr: str) -> str:
    """A list of directory prefixes, each ending in `/`."""
    return f"({expr}).map(p, p.endsWith('/') ? p : p + '/')"


# `variables.<name>` in every expression (ValidatingAdmissionPolicy `spec.variables`).
VARIABLES: tuple[tuple[str, str], ...] = (
    ("volumeSources", _param_list("volumeSources")),
    ("hostPathPrefixes", _as_dir(_param_list("hostPathPrefixes"))),
    ("nfsServers", _param_list("nfsServers")),
    ("imagePrefixes", _param_list("imagePrefixes")),
    ("tolerationKeys", _param_list("tolerationKeys")),
    ("priorityClassNames", _param_list("priorityClassNames")),
    (
        "reservedPrefixes",
        "[" + ", ".join(f"'{p}'" for p in BUILTIN_RESERVED_PREFIXES) + "] + "
        + _as_dir(_param_list("reservedPrefixes")),
    ),
    (
        "secretReferences",
        "has(params.data) && 'secretReferences' in params.data ? params.data.secretReferences.trim() : 'Refused'",
    ),
)


def _allowed(name: str) -> str:
    """'a, b' or 'none', for messages."""
    return f"(variables.{name}.size() > 0 ? variables.{name}.join(', ') : 'none')"


def _volume_rules(field: str, guard: str, volume: str) -> list[Validation]:
    kind = f"(has({volume}.hostPath) ? 'hostPath' : has({volume}.nfs) ? 'nfs' : 'persistentVolumeClaim')"
    allowed_source = " || ".join(f"(has({volume}.{s}) && '{s}' in variables.volumeSources)" for s in VOLUME_SOURCES)
    return [
        Validation(
            name=f"{field}-source",
            field=field,
            expression=f"!({guard}) || {allowed_source}",
            message=f"'{field}: ' + {kind} + ' volumes are not allowed by the DataMix policy of the cluster "
            f"(allowed: ' + {_allowed('volumeSources')} + ')'",
        ),
        Validation(
            name=f"{field}-host-path",
            field=f"{field}.hostPath.path",
            expression=f"!({guard} && has({volume}.hostPath)) || "
            f"variables.hostPathPrefixes.exists(p, ({volume}.hostPath.path + '/').startsWith(p))",
            message=f"'{field}.hostPath.path: ' + {volume}.hostPath.path + ' is outside the host directories the "
            f"DataMix policy allows (allowed: ' + {_allowed('hostPathPrefixes')} + ')'",
        ),
        Validation(
            name=f"{field}-nfs-server",
            field=f"{field}.nfs.server",
            expression=f"!({guard} && has({volume}.nfs)) || {volume}.nfs.server in variables.nfsServers",
            message=f"'{field}.nfs.server: ' + {volume}.nfs.server + ' is not an NFS server the DataMix policy "
            f"allows (allowed: ' + {_allowed('nfsServers')} + ')'",
        ),
    ]


_IMAGE = "object.spec.image"
_IMAGE_ALLOWED = (
    f"variables.imagePrefixes.exists(p, {_IMAGE} == p || (p.endsWith('/') && {_IMAGE}.startsWith(p)) || "
    f"(({_IMAGE}.startsWith(p + ':') || {_IMAGE}.startsWith(p + '@')) && "
    # `repo:tag` or `repo@digest`, not `repo:5000/other`: a tag or digest holds no `/`.
    f"{_IMAGE}.split('/').size() == p.split('/').size()))"
)
_TOLERATIONS = "object.spec.resources.tolerations"
_KEYLESS = "!has(t.key) || t.key == ''"
_UNLISTED_KEY = "has(t.key) && t.key != '' && !(t.key in variables.tolerationKeys)"
_PRIORITY = "object.spec.resources.priorityClassName"
_POD_META = "object.spec.podTemplate.metadata"
_RESERVED = "variables.reservedPrefixes.exists(p, k.startsWith(p) || k.contains('.' + p))"
_ENV = "object.spec.env"
_PULL = "object.spec.imagePullSecrets"


def _may_get_secret(name: str) -> str:
    return (
        "authorizer.group('').resource('secrets').namespace(object.metadata.namespace)"
        f".name({name}).check('get').allowed()"
    )


def _index(items: str, predicate: str, var: str) -> str:
    """The index of the first item of `items` for which `predicate` (over `var`) holds, as a string."""
    return f"string({items}.indexOf({items}.filter({var}, {predicate})[0]))"


_SECRET_ENV = "has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
# The API server evaluates `authorizer` in expressions and variables but not in messages, so the
# Secrets the requesting user may not get are variables, which the messages name. Only the API
# server can evaluate these (the operator knows no requesting user).
ADMISSION_VARIABLES: tuple[tuple[str, str], ...] = (
    (
        "unreadableEnvSecrets",
        f"has({_ENV}) ? {_ENV}.filter(e, {_SECRET_ENV} && "
        f"!{_may_get_secret('e.valueFrom.secretKeyRef.name')}) : []",
    ),
    ("unreadablePullSecrets", f"has({_PULL}) ? {_PULL}.filter(s, !{_may_get_secret('s.name')}) : []"),
)
_NO_ADMISSION_CHECK = (
    "Secret references are refused: no admission policy checked that whoever created this experiment may read "
    "the Secret (policy parameter secretReferences: ' + variables.secretReferences + '); install the "
    "admission policy of the chart or ask the platform team"
)


def _pod_metadata_rule(what: str) -> Validation:
    field = f"spec.podTemplate.metadata.{what}"
    values = f"{_POD_META}.{what}"
    guard = f"has(object.spec.podTemplate) && has({_POD_META}) && has({values})"
    return Validation(
        name=f"reserved-{what}",
        field=field,
        expression=f"!({guard}) || {values}.all(k, !{_RESERVED})",
        message=f"'{field}[' + {values}.filter(k, {_RESERVED})[0] + ']: the prefix is reserved for Kubernetes, "
        f"the operator and the controllers of the cluster (' + variables.reservedPrefixes.join(', ') + '); "
        "use a key of your own domain'",
    )


VALIDATIONS: tuple[Validation, ...] = (
    *_volume_rules("spec.datasets.volume", "has(object.spec.datasets.volume)", "object.spec.datasets.volume"),
    *_volume_rules(
        "spec.output.volume", "has(object.spec.output) && has(object.spec.output.volume)", "object.spec.output.volume"
    ),
    Validation(
        name="image",
        field="spec.image",
        expression=f"!has({_IMAGE}) || {_IMAGE_ALLOWED}",
        message=f"'spec.image: ' + {_IMAGE} + ' is not an image the DataMix policy allows (allowed: ' + "
        f"{_allowed('imagePrefixes')} + '); leave spec.image out to run the trainer image of the operator'",
    ),
    Validation(
        name="keyless-toleration",
        field="spec.resources.tolerations[].key",
        expression=f"!has({_TOLERATIONS}) || {_TOLERATIONS}.all(t, !({_KEYLESS}))",
        message=f"'spec.resources.tolerations[' + {_index(_TOLERATIONS, _KEYLESS, 't')} + '].key: a toleration "
        "without a key tolerates every taint, control-plane nodes included; name the taint key'",
    ),
    Validation(
        name="toleration-key",
        field="spec.resources.tolerations[].key",
        expression=f"!has({_TOLERATIONS}) || {_TOLERATIONS}.all(t, !({_UNLISTED_KEY}))",
        message=f"'spec.resources.tolerations[' + {_index(_TOLERATIONS, _UNLISTED_KEY, 't')} + '].key: ' + "
        f"{_TOLERATIONS}.filter(t, {_UNLISTED_KEY})[0].key + ' is not a taint the DataMix policy lets pods "
        f"tolerate (allowed: ' + {_allowed('tolerationKeys')} + ')'",
    ),
    Validation(
        name="priority-class",
        field="spec.resources.priorityClassName",
        expression=f"!has({_PRIORITY}) || {_PRIORITY} in variables.priorityClassNames",
        message=f"'spec.resources.priorityClassName: ' + {_PRIORITY} + ' is not a PriorityClass the DataMix "
        f"policy allows (allowed: ' + {_allowed('priorityClassNames')} + ')'",
    ),
    _pod_metadata_rule("labels"),
    _pod_metadata_rule("annotations"),
    Validation(
        name="env-secret",
        field="spec.env[].valueFrom.secretKeyRef.name",
        expression="variables.unreadableEnvSecrets.size() == 0",
        message=f"'spec.env[' + string({_ENV}.indexOf(variables.unreadableEnvSecrets[0])) + "
        "'].valueFrom.secretKeyRef.name: you may not get Secret ' + "
        "variables.unreadableEnvSecrets[0].valueFrom.secretKeyRef.name + ', so you may not hand it to the trainer'",
        operator_expression=f"variables.secretReferences != 'Refused' || !has({_ENV}) || "
        f"{_ENV}.all(e, !({_SECRET_ENV}))",
    ),
    Validation(
        name="image-pull-secret",
        field="spec.imagePullSecrets[].name",
        expression="variables.unreadablePullSecrets.size() == 0",
        message=f"'spec.imagePullSecrets[' + string({_PULL}.indexOf(variables.unreadablePullSecrets[0])) + "
        "'].name: you may not get Secret ' + variables.unreadablePullSecrets[0].name + ', so you may not hand it "
        "to the kubelet'",
        operator_expression=f"variables.secretReferences != 'Refused' || !has({_PULL}) || {_PULL}.size() == 0",
    ),
)

# The operator's messages for the two Secret rules (the admission messages name the Secret the
# requesting user may not get; the operator knows no requesting user).
_OPERATOR_MESSAGES = {
    "env-secret": f"'spec.env[' + {_index(_ENV, _SECRET_ENV, 'e')} + '].valueFrom.secretKeyRef.name: "
    f"{_NO_ADMISSION_CHECK}'",
    "image-pull-secret": f"'spec.imagePullSecrets[0].name: {_NO_ADMISSION_CHECK}'",
}


def admission_policy_spec() -> dict[str, Any]:
    """`spec` of the chart's ValidatingAdmissionPolicy (names and the binding are the chart's)."""
    return {
        "failurePolicy": "Fail",
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    # Not the status subresource: the operator's status writes are not the tenant's.
                    "resources": [PLURAL],
                }
            ]
        },
        "variables": [{"name": name, "expression": expr} for name, expr in VARIABLES + ADMISSION_VARIABLES],
        "validations": [
            {"expression": v.expression, "messageExpression": v.message, "reason": "Forbidden"} for v in VALIDATIONS
        ],
    }


def render_admission_policy_spec() -> str:
    import yaml

    header = (
        "# Generated from src/datamix/policy.py by `datamix crd --write`; do not edit.\n"
        "# The `spec` of the chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml).\n"
    )
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # CEL is full of quotes: literal blocks keep it readable (no '' escapes).
        style = "|" if "'" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return header + yaml.dump(admission_policy_spec(), Dumper=Dumper, sort_keys=False, width=1000)


# --- the operator's evaluation --------------------------------------------------------------------


def _cel_split(text: Any, sep: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(s) for s in str(text).split(str(sep))])


def _cel_trim(text: Any) -> celtypes.StringType:
    return celtypes.StringType(str(text).strip())


def _cel_join(items: Any, sep: Any = "") -> celtypes.StringType:
    return celtypes.StringType(str(sep).join(str(i) for i in items))


def _cel_index_of(items: Any, item: Any) -> celtypes.IntType:
    for i, candidate in enumerate(items):
        if candidate == item:
            return celtypes.IntType(i)
    return celtypes.IntType(-1)


# The Kubernetes CEL libraries the rules use that cel-python lacks (strings: split, trim, join;
# lists: indexOf), with the same meaning.
_KUBERNETES_FUNCTIONS: dict[str, Any] = {
    "split": _cel_split,
    "trim": _cel_trim,
    "join": _cel_join,
    "indexOf": _cel_index_of,
}


@cache
def _program(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression), functions=_KUBERNETES_FUNCTIONS)


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    return _program(expression).evaluate(activation)


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return self.message


def violations(manifest: Mapping[str, Any], params: PolicyParams) -> list[Violation]:
    """The policy's verdict on an experiment as the operator sees it: empty when allowed."""
    obj = json_to_cel(dict(manifest))
    variables: dict[str, Any] = {}
    activation: dict[str, Any] = {
        "object": obj,
        "params": json_to_cel({"data": params.configmap_data()}),
    }
    for name, expression in VARIABLES:
        activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
        variables[name] = _evaluate(expression, activation)
    activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
    found: list[Violation] = []
    for rule in VALIDATIONS:
        expression = rule.operator_expression or rule.expression
        if not bool(_evaluate(expression, activation)):
            message = _OPERATOR_MESSAGES.get(rule.name, rule.message)
            found.append(Violation(rule.name, str(_evaluate(message, activation))))
    return found
