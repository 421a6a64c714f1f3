"""The DataMix policy as the operator evaluates it (datamix.policy with cel-python), and the single
source of its admission copy. The API server's side is tests/security/test_policy_e2e.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamix.crd import POLICY_FILE, generated_files
from datamix.policy import ADMISSION_RULES, OPERATOR_RULES, PolicyParams, admission_policy_spec, violations
from tests.security.abusive_manifests import ABUSIVE_MANIFESTS, TEST_POLICY, benign_manifest

REPO = Path(__file__).resolve().parents[2]


def test_benign_manifest_is_allowed() -> None:
    assert violations(benign_manifest(), TEST_POLICY) == []


@pytest.mark.parametrize(
    ("manifest", "field", "message"), [pytest.param(m, f, s, id=i) for i, m, f, s in ABUSIVE_MANIFESTS]
)
def test_abusive_manifest_is_refused_with_the_field_named(manifest: dict[str, Any], field: str, message: str) -> None:
    found = [str(v) for v in violations(manifest, TEST_POLICY)]
    assert any(v.startswith(f"{field}: ") and message in v for v in found), found


def test_table_covers_every_rule_and_is_large_enough() -> None:
    assert len(ABUSIVE_MANIFESTS) >= 15
    assert len({i for i, *_ in ABUSIVE_MANIFESTS}) == len(ABUSIVE_MANIFESTS)
    hit = {v.rule for _, m, _, _ in ABUSIVE_MANIFESTS for v in violations(m, TEST_POLICY)}
    # The table's policy allows hostPath, so the two hostPath-source rules cannot fire there; the
    # chart's defaults (PVC only) refuse the same manifests by source.
    defaults = replace(PolicyParams(), imagePrefixes=("datamix-trainer",))
    hit |= {v.rule for _, m, _, _ in ABUSIVE_MANIFESTS for v in violations(m, defaults)}
    assert hit == {v.name for v in OPERATOR_RULES} == {v.name for v in ADMISSION_RULES}


def test_each_abusive_manifest_breaks_only_rules_of_its_own_field() -> None:
    """Each row tests what it says: the benign manifest with one field made abusive."""
    for case_id, manifest, field, _ in ABUSIVE_MANIFESTS:
        found = [str(v) for v in violations(manifest, TEST_POLICY)]
        assert found, case_id
        assert all(v.startswith(field.split("[")[0]) for v in found), (case_id, found)


def test_secret_references_pass_the_operator_only_when_admission_checked_them() -> None:
    secret_cases = [(i, m) for i, m, f, _ in ABUSIVE_MANIFESTS if "ecret" in f]
    assert len(secret_cases) == 2
    for mode, refused in (("Refused", True), ("CheckedAtAdmission", False), ("Allowed", False)):
        params = replace(TEST_POLICY, secretReferences=mode)
        for case_id, manifest in secret_cases:
            assert bool(violations(manifest, params)) == refused, (mode, case_id)


def test_chart_defaults_refuse_host_paths_nfs_and_foreign_images() -> None:
    defaults = replace(PolicyParams(), imagePrefixes=("datamix-trainer",))
    manifest = benign_manifest()
    assert [v.rule for v in violations(manifest, defaults)] == [
        "spec.datasets.volume-source",
        "spec.datasets.volume-host-path",
        "toleration-key",
        "priority-class",
    ]
    manifest["spec"]["datasets"]["volume"] = {"persistentVolumeClaim": {"claimName": "corpus"}}
    del manifest["spec"]["resources"]["tolerations"]
    del manifest["spec"]["resources"]["priorityClassName"]
    assert violations(manifest, defaults) == []


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("datamix-trainer", True),
        ("datamix-trainer:0.1.0", True),
        ("datamix-trainer@sha256:" + "a" * 64, True),
        ("datamix-trainer:0.1.0@sha256:" + "a" * 64, True),
        ("datamix-trainer-evil:1", False),
        ("datamix-trainer/evil:1", False),
        ("registry.example.com/team-a/trainer:2", True),
        ("registry.example.com/team-a/sub/trainer:2", True),
        ("registry.example.com/team-ab/trainer:2", False),
        ("registry.example.com/team-a", False),
    ],
)
def test_image_prefixes(image: str, allowed: bool) -> None:
    manifest = benign_manifest()
    manifest["spec"]["image"] = image
    assert (violations(manifest, TEST_POLICY) == []) == allowed


def test_params_round_trip_through_a_policy_object() -> None:
    assert PolicyParams.from_spec(TEST_POLICY.spec()) == TEST_POLICY
    assert PolicyParams.from_spec({"tolerationKeys": ["a", "b"]}).tolerationKeys == ("a", "b")
    with pytest.raises(ValueError, match="unknown policy parameter"):
        PolicyParams.from_spec({"volumeSource": ["hostPath"]})
    with pytest.raises(ValueError, match="list of strings"):
        PolicyParams.from_spec({"volumeSources": "hostPath"})
    with pytest.raises(ValueError, match="secretReferences"):
        PolicyParams.from_spec({"secretReferences": "Sometimes"})
    with pytest.raises(ValueError, match="volumeSources"):
        PolicyParams.from_spec({"volumeSources": ["emptyDir"]})


def test_chart_policy_is_the_generated_policy() -> None:
    assert POLICY_FILE.read_text() == generated_files()[POLICY_FILE], "run `datamix crd --write`"
    assert yaml.safe_load(POLICY_FILE.read_text()) == admission_policy_spec()


def test_values_document_every_policy_parameter() -> None:
    """values.yaml's `policy` section feeds every parameter (templates/policy-configmap.yaml)."""
    template = (REPO / "helm/datamix/templates/policy-configmap.yaml").read_text()
    for key in PolicyParams().spec():
        assert f"  {key}: " in template, key
    values = yaml.safe_load((REPO / "helm/datamix/values.yaml").read_text())["policy"]
    defaults = PolicyParams()
    for key in ("volumeSources", "hostPathPrefixes", "nfsServers", "tolerationKeys", "priorityClassNames",
                "reservedPrefixes"):
        assert tuple(values[key]) == getattr(defaults, key), key


def test_admission_checks_every_secret_reference_the_schema_allows() -> None:
    """The API server cannot call the authorizer in a message, so there is one rule per position
    of spec.env and spec.imagePullSecrets; the schema's maxItems bounds both lists."""
    from datamix.schema import SPEC

    fields = {v.field for v in ADMISSION_RULES}
    for i in range(SPEC["properties"]["env"]["maxItems"]):
        assert f"spec.env[{i}].valueFrom.secretKeyRef.name" in fields
    for i in range(SPEC["properties"]["imagePullSecrets"]["maxItems"]):
        assert f"spec.imagePullSecrets[{i}].name" in fields
    assert all("authorizer" not in v.message for v in ADMISSION_RULES)
    assert all("authorizer" not in v.expression for v in OPERATOR_RULES)


def test_datamix_validate_checks_a_policy_offline(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"apiVersion": "datamix.io/v1alpha1", "kind": "DataMixPolicy",
                                      "metadata": {"name": "p"}, "spec": TEST_POLICY.spec()}))
    _, manifest, field, message = ABUSIVE_MANIFESTS[0]
    for name, body, code in (("abusive", manifest, 2), ("benign", benign_manifest(), 0)):
        file = tmp_path / f"{name}.yaml"
        file.write_text(yaml.safe_dump(body))
        res = subprocess.run([sys.executable, "-m", "datamix_cli", "validate", str(file), "--policy", str(policy)],
                             capture_output=True, text=True, check=False)
        assert res.returncode == code, res.stderr
        if code:
            assert res.stderr.count("\n") == 1, res.stderr
            assert f"{file}: {field}: " in res.stderr
            assert message in res.stderr
