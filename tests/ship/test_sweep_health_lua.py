"""deploy/argocd/sweep-health.lua under Lua 5.1, like health.lua for experiments: hand-written
cases (tests/ship/sweep_health_cases.yaml) and every sweep status document the sweep e2e test
captured from the real operator (tests/operator/captured/sweep-*.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SWEEP_HEALTH_LUA = REPO / "deploy" / "argocd" / "sweep-health.lua"
SWEEP_HEALTH_KEY = "resource.customizations.health.datamix.io_DataMixtureSweep"
CASES = yaml.safe_load(Path(__file__).with_name("sweep_health_cases.yaml").read_text())
CAPTURED = sorted((REPO / "tests" / "operator" / "captured").glob("sweep-*.json"))
# What Argo CD should say of each captured document, by the phase in its file name.
CAPTURED_EXPECTED = {"pending": "Progressing", "running": "Progressing", "fitting": "Progressing",
                     "succeeded": "Healthy", "failed": "Degraded", "suspended": "Suspended"}

lupa_lua51 = pytest.importorskip("lupa.lua51", reason="lupa with its Lua 5.1 runtime is needed (pip install lupa)")


def evaluate(obj: dict[str, Any]) -> dict[str, str]:
    lua = lupa_lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(SWEEP_HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health_of_sweep_status_document(case: dict[str, Any]) -> None:
    verdict = evaluate(case["object"])
    assert verdict["status"] == case["expect"], verdict
    assert verdict["message"]
    if "message" in case:
        assert case["message"] in verdict["message"]


def test_cases_cover_every_state_the_script_returns() -> None:
    assert {c["expect"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.skipif(not CAPTURED, reason="no captured sweep documents yet (tests/operator/test_sweep_e2e.py "
                    "writes them with DATAMIX_CAPTURE_STATUS=1)")
@pytest.mark.parametrize("path", CAPTURED or [Path("none")], ids=[p.name for p in CAPTURED] or ["none"])
def test_health_of_captured_sweep_document(path: Path) -> None:
    obj = json.loads(path.read_text())
    assert obj["kind"] == "DataMixtureSweep"
    verdict = evaluate(obj)
    assert verdict["status"] == CAPTURED_EXPECTED[path.stem.split("-")[1]], (path.name, verdict)


def test_argocd_cm_carries_the_script() -> None:
    data = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())["data"]
    assert data[SWEEP_HEALTH_KEY] == SWEEP_HEALTH_LUA.read_text()


def test_script_only_uses_lua51() -> None:
    code = "\n".join(line.split("--", 1)[0] for line in SWEEP_HEALTH_LUA.read_text().splitlines())
    for construct in ("goto ", "::", "//", "<<", ">>"):
        assert construct not in code, construct
