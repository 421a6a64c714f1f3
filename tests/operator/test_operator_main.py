"""The kopf wiring (main.py) without a cluster: what kopf is asked to do per event."""

from __future__ import annotations

import kopf
from datamix_operator.config import OperatorConfig
from datamix_operator.controller import Controller
from datamix_operator.leader import Leadership
from datamix_operator.main import Health, NoDiffBase, Wakeup, build_registry, operator_settings
from datamix_operator.progress import ProgressTracker
from datamix_operator.reconcile import Reconciler
from datamix_operator.sweep.controller import SweepController
from datamix_operator.sweep.fit import Fitter
from datamix_operator.sweep.kube import SweepClient
from datamix_operator.sweep.reconcile import SweepReconciler
from operator_fakes import FakeKube


def test_no_handler_needs_kopf_change_detection_so_no_diff_base_is_kept() -> None:
    # NoDiffBase is right only while every resource handler is an on.event handler: an on.create,
    # on.update, on.resume, on.field or daemon would need the diff base (or a finalizer) it drops.
    config = OperatorConfig(namespaces=("ns",))
    kube = FakeKube()
    reconciler = Reconciler(kube)
    controller = Controller(reconciler, workers=1)
    sweeps = SweepController(SweepReconciler(SweepClient(kube), Fitter()))  # type: ignore[arg-type]
    registry = build_registry(config, reconciler, controller, Leadership(), Health(None), Wakeup(),
                              ProgressTracker(interval=30), sweeps)

    watching = registry._watching.get_all_handlers()  # kopf has no public listing
    assert sorted(h.id for h in watching) == ["configmap", "dms", "dmx", "job", "pod"], "one handler per resource"
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert list(registry._indexing.get_all_handlers()) == []
    assert isinstance(operator_settings(config).persistence.diffbase_storage, NoDiffBase)


def test_the_diff_base_is_empty_whatever_the_object() -> None:
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"big": list(range(1000))}})
    storage = NoDiffBase()
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
