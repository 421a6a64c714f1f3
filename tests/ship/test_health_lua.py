"""deploy/argocd/health.lua under Lua 5.1 (Argo CD runs gopher-lua, a Lua 5.1 implementation).

Cases: tests/ship/health_cases.yaml (hand-written after the status contract) and every status
document the operator's e2e tests captured from the real operator (tests/operator/captured/),
whose expected health follows from its phase and current conditions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "deploy" / "argocd" / "health.lua"
CASES = yaml.safe_load((Path(__file__).with_name("health_cases.yaml")).read_text())
CAPTURED_DIR = REPO / "tests" / "operator" / "captured"
ARGO_STATES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

lupa_lua51 = pytest.importorskip("lupa.lua51", reason="lupa with its Lua 5.1 runtime is needed (pip install lupa)")


def evaluate(obj: dict[str, Any]) -> dict[str, str]:
    """Runs health.lua the way Argo CD does: `obj` is a global, the chunk returns the verdict."""
    lua = lupa_lua51.LuaRuntime(unpack_returned_tuples=True)
    assert "Lua 5.1" in lua.eval("_VERSION")
    # Argo CD hands the object over as decoded JSON; a JSON round trip makes the test see the same.
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health_of_status_document(case: dict[str, Any]) -> None:
    verdict = evaluate(case["object"])
    assert verdict["status"] == case["expect"], verdict
    assert verdict["message"], "every verdict carries a message"
    if "message" in case:
        assert case["message"] in verdict["message"]


def test_cases_cover_every_argo_state_the_script_returns() -> None:
    assert {c["expect"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_script_only_uses_lua51() -> None:
    """gopher-lua is Lua 5.1: no goto/labels, no integer division, no bitwise operators."""
    text = HEALTH_LUA.read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    for construct in ("goto ", "::", "//", "<<", ">>"):
        assert construct not in code, construct


def _captured_documents() -> list[Path]:
    if not CAPTURED_DIR.is_dir():
        return []
    return sorted(p for p in CAPTURED_DIR.iterdir() if p.suffix in {".json", ".yaml", ".yml"})


def _load(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, list):
            out.extend(d for d in doc if isinstance(d, dict))
        elif isinstance(doc, dict) and doc.get("kind") == "DataMixtureExperimentList":
            out.extend(doc.get("items") or [])
        elif isinstance(doc, dict):
            out.append(doc)
    return [d for d in out if d.get("kind", "DataMixtureExperiment") == "DataMixtureExperiment"]


def expected_health(obj: dict[str, Any]) -> str:
    """The health a person would give a captured document: from the phase and the current
    (True, same generation) Stalled/Failed conditions."""
    generation = (obj.get("metadata") or {}).get("generation")
    status = obj.get("status")
    if not status:
        return "Progressing"
    if generation is not None and status.get("observedGeneration", generation) < generation:
        return "Progressing"
    current = {c["type"] for c in status.get("conditions") or []
               if c.get("status") == "True"
               and (generation is None or c.get("observedGeneration", generation) >= generation)}
    phase = status.get("phase")
    deadline_exceeded = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        and (generation is None or c.get("observedGeneration", generation) >= generation)
        for c in status.get("conditions") or []
    )
    if "Stalled" in current or "Failed" in current or phase == "Failed":
        return "Degraded"
    if deadline_exceeded and phase == "Running":
        return "Degraded"
    if "Suspended" in current or phase == "Suspended":
        return "Suspended"
    if "Succeeded" in current or phase == "Succeeded":
        return "Healthy"
    return "Progressing"


CAPTURED = [(p, i, d) for p in _captured_documents() for i, d in enumerate(_load(p))]
# What Argo CD should say of the documents the operator's e2e tests capture, by file name prefix.
CAPTURED_EXPECTED = {
    "pending": "Progressing", "running": "Progressing", "restarting": "Progressing",
    "succeeded": "Healthy", "failed": "Degraded", "stalled": "Degraded", "suspended": "Suspended",
}


@pytest.mark.skipif(not CAPTURED, reason=f"no captured status documents in {CAPTURED_DIR} yet "
                    "(written by the operator e2e tests)")
@pytest.mark.parametrize("path,index,obj", CAPTURED or [(None, 0, {})],
                         ids=[f"{p.name}[{i}]" for p, i, _ in CAPTURED] or ["none"])
def test_health_of_captured_status_document(path: Path, index: int, obj: dict[str, Any]) -> None:
    verdict = evaluate(obj)
    assert verdict["status"] in ARGO_STATES
    assert verdict["status"] == expected_health(obj), (path.name, index, verdict, obj.get("status"))
    assert verdict["message"]
    prefix = path.stem.split("-")[0]
    if prefix in CAPTURED_EXPECTED:
        assert verdict["status"] == CAPTURED_EXPECTED[prefix], (path.name, verdict)
