"""The operator's own admission (datamix_operator.admission) in the reconciler, against the
in-memory API server: the policy and the size check stall an experiment before anything is
created; the policy's parameters load from the chart's ConfigMap (file or mounted directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datamix_operator.admission import MAX_CHILD_BYTES, Admission, load_policy
from datamix_operator.metrics import Metrics
from datamix_operator.reconcile import Reconciler
from operator_fakes import Driven, FakeKube, manifest
from prometheus_client import CollectorRegistry

from datamix.errors import UserError
from datamix.policy import PolicyParams
from tests.security.abusive_manifests import ABUSIVE_MANIFESTS, TEST_POLICY, benign_manifest


def make(policy: PolicyParams | None) -> tuple[FakeKube, Driven]:
    """The reconciler behind the real controller and work queue, with the operator's admission."""
    kube = FakeKube()
    rec = Driven(Reconciler(kube, trainer_image="trainer:test", metrics=Metrics(CollectorRegistry()),
                            admission=Admission(policy)))
    return kube, rec


def stalled(kube: FakeKube, name: str) -> dict[str, str]:
    conditions = {c["type"]: c for c in kube.experiment(name)["status"]["conditions"]}
    assert conditions["Stalled"]["status"] == "True", conditions
    return dict(conditions["Stalled"])


@pytest.mark.parametrize(("case_id", "body", "field", "message"), ABUSIVE_MANIFESTS,
                         ids=[c[0] for c in ABUSIVE_MANIFESTS])
def test_policy_violation_stalls_before_anything_is_created(case_id: str, body: dict, field: str,
                                                            message: str) -> None:
    kube, rec = make(TEST_POLICY)
    kube.apply(body)
    rec.reconcile("ns", body["metadata"]["name"])
    cond = stalled(kube, body["metadata"]["name"])
    assert cond["reason"] == "PolicyViolation"
    assert cond["message"].startswith(f"{field}: ")
    assert message in cond["message"]
    assert kube.jobs() == []
    assert kube.configmaps() == []


def test_benign_experiment_runs_under_the_policy() -> None:
    kube, rec = make(TEST_POLICY)
    kube.apply(benign_manifest())
    rec.reconcile("ns", "benign")
    assert len(kube.jobs()) == 1
    assert len(kube.configmaps()) == 1


def test_without_a_policy_the_operator_checks_only_the_size() -> None:
    kube, rec = make(None)
    kube.apply(ABUSIVE_MANIFESTS[0][1])
    rec.reconcile("ns", "benign")
    assert len(kube.jobs()) == 1


def test_a_job_over_the_size_limit_stalls_too_large() -> None:
    kube, rec = make(None)
    # Within the schema's bounds (64 annotations and 64 variables of 4 KiB each), the Master and
    # Worker templates of the job both repeat them: over 1 MiB.
    body = manifest(podTemplate={"metadata": {"annotations": {f"example.com/a{i}": "x" * 4096 for i in range(64)}}},
                    env=[{"name": f"VAR_{i}", "value": "y" * 4096} for i in range(64)])
    kube.apply(body)
    rec.reconcile("ns", "mix-a")
    cond = stalled(kube, "mix-a")
    assert cond["reason"] == "TooLarge"
    assert "PyTorchJob" in cond["message"]
    assert f"the limit of {MAX_CHILD_BYTES} bytes" in cond["message"]
    assert kube.jobs() == []
    assert kube.configmaps() == []


def test_policy_loads_from_the_object_its_configmap_and_the_mounted_configmap(tmp_path: Path) -> None:
    policy = {"apiVersion": "datamix.io/v1alpha1", "kind": "DataMixPolicy", "metadata": {"name": "p"},
              "spec": TEST_POLICY.spec()}
    (tmp_path / "object.yaml").write_text(yaml.safe_dump(policy))
    assert load_policy(tmp_path / "object.yaml") == TEST_POLICY
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"},
                 "data": {"policy.yaml": yaml.safe_dump(policy)}}
    (tmp_path / "configmap.yaml").write_text(yaml.safe_dump(configmap))
    assert load_policy(tmp_path / "configmap.yaml") == TEST_POLICY
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "policy.yaml").write_text(yaml.safe_dump(policy))
    assert load_policy(mounted) == TEST_POLICY
    policy["spec"]["volumeSource"] = ["hostPath"]
    (mounted / "policy.yaml").write_text(yaml.safe_dump(policy))
    with pytest.raises(UserError, match="unknown policy parameter"):
        load_policy(mounted)
    (tmp_path / "other.yaml").write_text("x: 1\n")
    with pytest.raises(UserError, match="expected a DataMixPolicy"):
        load_policy(tmp_path / "other.yaml")


def test_every_path_the_operator_mounts_is_reserved_in_the_schema() -> None:
    """The schema keeps baseDir and output.path clear of OPERATOR_MOUNT_PATHS; a mount the renderer
    adds without registering it there would let a user's volume collide with it."""
    from datamix_operator.render import DATA_VOLUME, OUTPUT_VOLUME, render_children

    from datamix.runspec import OPERATOR_MOUNT_PATHS, OPERATOR_SCRATCH_PATHS

    body = manifest()
    _, job = render_children(body, "ns")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        user_volumes = {DATA_VOLUME, OUTPUT_VOLUME}
        for container in pod["containers"]:
            own = {m["mountPath"] for m in container["volumeMounts"] if m["name"] not in user_volumes}
            own.add(container["terminationMessagePath"])
            reserved = {*OPERATOR_MOUNT_PATHS, *OPERATOR_SCRATCH_PATHS}
            assert own <= reserved, own - reserved
