"""`datamix render` of every example and test-fixture manifest is byte-identical to the committed
golden files, and their run ids are pinned.

A change of a run id is never incidental: a running operator would retire every run (and start it
anew) after an upgrade. To accept a deliberate change, regenerate with
`DATAMIX_UPDATE_GOLDEN=1 python -m pytest tests/api/test_golden_render.py` and say why in the commit.

tests/api/golden/manifests/ snapshots the tests' fixture manifests (tests/api/manifests.py, the
operator's fakes, an imported FlagScale config) and variants that reach every branch of the renderer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datamix.experiment import load_manifest, run_id

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
RUN_IDS = GOLDEN / "run_ids.json"
UPDATE = os.environ.get("DATAMIX_UPDATE_GOLDEN") == "1"
# The experiment examples (examples/sweep.yaml is a DataMixtureSweep: tests/search reads it).
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if "\nkind: DataMixtureExperiment\n" in p.read_text())
MANIFESTS = EXAMPLES + sorted((GOLDEN / "manifests").glob("*.yaml"))


def _key(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _golden_path(path: Path) -> Path:
    return GOLDEN / "rendered" / f"{path.parent.name}--{path.name}"


def render_with_the_command(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    from datamix_cli.main import main

    capsys.readouterr()
    code = main(["render", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_the_golden_set_covers_the_examples() -> None:
    assert {p.name for p in EXAMPLES} <= {p.name for p in MANIFESTS}
    assert len(EXAMPLES) >= 2
    assert len(MANIFESTS) >= 10


@pytest.mark.parametrize("path", MANIFESTS, ids=_key)
def test_render_is_byte_identical_to_the_golden_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rendered = render_with_the_command(path, capsys)
    golden = _golden_path(path)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert golden.is_file(), f"no golden file {golden}; run with DATAMIX_UPDATE_GOLDEN=1 to create it"
    assert rendered == golden.read_text(), f"`datamix render {_key(path)}` differs from {golden.name}"


def test_run_ids_are_pinned() -> None:
    ids = {_key(path): run_id(load_manifest(path)) for path in MANIFESTS}
    if UPDATE:
        RUN_IDS.write_text(json.dumps(ids, indent=2, sort_keys=True) + "\n")
    pinned = json.loads(RUN_IDS.read_text())
    assert sorted(ids) == sorted(pinned), "the golden set changed: regenerate run_ids.json deliberately"
    changed = {k: (pinned[k], ids[k]) for k in ids if ids[k] != pinned[k]}
    assert not changed, f"run ids changed (pinned, now): {changed}"
