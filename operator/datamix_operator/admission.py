"""The operator's last word before it creates a run's children: the cluster's DataMix policy
(the same CEL rules as the chart's ValidatingAdmissionPolicy, `datamix.policy`) and the size of
what it would send.

An experiment refused here gets `Stalled` with the reason of the `Refused` error (PolicyViolation
or TooLarge) and nothing is created. The policy's parameters come from `--policy`: the chart
mounts a ConfigMap holding the same DataMixPolicy object the admission policy reads.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from threading import Lock
from typing import Any

import yaml

from datamix.errors import UserError
from datamix.names import Reason
from datamix.policy import POLICY_KIND, PolicyParams, violations

# etcd refuses a request over 1.5 MiB (its default --max-request-bytes); the API server stores the
# object with managedFields and status next to what the operator sends. Sending more than this
# would fail on every retry, so the operator stops first.
MAX_CHILD_BYTES = 1024 * 1024
_CACHE_SIZE = 4096


class Refused(UserError):
    """An experiment the operator will not run; `reason` is the Stalled condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


POLICY_FILE_KEY = "policy.yaml"


def load_policy(path: str | Path) -> PolicyParams:
    """The policy's parameters from the chart's policy ConfigMap, mounted (a directory holding
    `policy.yaml`) or as a YAML file, or from a YAML file of the DataMixPolicy object itself."""
    where = Path(path)
    try:
        doc = yaml.safe_load((where / POLICY_FILE_KEY if where.is_dir() else where).read_text())
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            doc = yaml.safe_load((doc.get("data") or {}).get(POLICY_FILE_KEY) or "null")
        if not isinstance(doc, dict) or doc.get("kind") != POLICY_KIND or not isinstance(doc.get("spec"), dict):
            raise ValueError(f"expected a {POLICY_KIND} (or the chart's ConfigMap holding one as {POLICY_FILE_KEY})")
        return PolicyParams.from_spec(doc["spec"])
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"--policy {path}: {err}") from err


class Admission:
    """Policy and size checks of an experiment's rendered run, remembered per spec generation
    (cel-python takes tens of milliseconds per experiment)."""

    def __init__(self, policy: PolicyParams | None) -> None:
        self.policy = policy
        self._verdicts: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._lock = Lock()

    def check(self, namespace: str, exp: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> None:
        """Raise Refused when the experiment breaks the policy or a child is too large to send."""
        for child in children:
            size = len(json.dumps(child, separators=(",", ":")).encode())
            if size > MAX_CHILD_BYTES:
                raise Refused(
                    Reason.TOO_LARGE,
                    f"the {child['kind']} for this experiment would be {size} bytes, over the limit of "
                    f"{MAX_CHILD_BYTES} bytes; shorten or remove labels, annotations, env or datasets",
                )
        if self.policy is None:
            return
        meta = exp["metadata"]
        key = (namespace, str(meta.get("uid")), int(meta.get("generation") or 0))
        with self._lock:
            verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = "; ".join(str(v) for v in violations(exp, self.policy))
            with self._lock:
                self._verdicts[key] = verdict
                while len(self._verdicts) > _CACHE_SIZE:
                    self._verdicts.popitem(last=False)
        if verdict:
            raise Refused(Reason.POLICY_VIOLATION, verdict)
