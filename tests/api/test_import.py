from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamix.experiment import build_run_spec
from datamix.importer import import_experiment
from datamix.validation import validate_manifest

REPO = Path(__file__).resolve().parents[2]
BASELINE = Path("/work/shared/seeds/openseek-configs/OpenSeek-Small-v1-Baseline/config_deepseek_v3_1_4b.yaml")
FLAGSCALE = REPO / "tests/fixtures/flagscale/pretrain_mix.yaml"


def raw_pairs(train_file: Path, base: str) -> list[tuple[float, str]]:
    """The (weight, path) pairs as the train file writes them, read independently of the importer."""
    items = yaml.safe_load(train_file.read_text())["data"]["data_path"]
    return [
        (float(items[i]), items[i + 1].replace("${experiment.dataset_base_dir}/", "")) for i in range(0, len(items), 2)
    ]


def assert_exact(manifest: dict, pairs: list[tuple[float, str]]) -> None:
    mixture = manifest["spec"]["datasets"]["mixture"]
    assert [m["path"] for m in mixture] == [p for _, p in pairs]
    total = math.fsum(w for w, _ in pairs)
    spec = build_run_spec(manifest)
    for (weight, _), dataset in zip(pairs, spec.datasets, strict=True):
        assert abs(dataset.share - weight / total) <= 1e-9
    assert abs(math.fsum(spec.shares) - 1) <= 1e-12
    assert len({m["name"] for m in mixture}) == len(mixture)
    assert validate_manifest(manifest) == []


@pytest.mark.skipif(not BASELINE.exists(), reason="the seed configs (../shared/seeds) are not on this machine")
def test_openseek_baseline_imports_exactly() -> None:
    manifest, warnings = import_experiment(BASELINE)
    pairs = raw_pairs(BASELINE.parent / "train/train_deepseek_v3_1_4b.yaml", "")
    assert len(pairs) == 84
    assert_exact(manifest, pairs)
    assert manifest["metadata"]["name"] == "openseek-small-v1-baseline"
    assert manifest["spec"]["model"]["preset"] == "openseek-small"
    assert manifest["spec"]["datasets"]["baseDir"] == "/data/OpenSeek-Pretrain-100B"
    assert manifest["spec"]["training"]["trainSamples"] == 24576000
    assert any("dataset_base_dir" in w and "relative" in w for w in warnings)
    assert any("cmds.before_start" in w for w in warnings)


def test_flagscale_config_of_our_own_imports_exactly() -> None:
    manifest, warnings = import_experiment(FLAGSCALE)
    pairs = raw_pairs(FLAGSCALE.parent / "train/mix_7b_dense.yaml", "")
    pairs = [(w, p.replace("${experiment.task.type}", "train")) for w, p in pairs]
    assert_exact(manifest, pairs)
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "fs-mix-ablation-v2"
    assert spec["datasets"]["baseDir"] == "/mnt/corpora/tokenized"
    assert spec["resources"] == {"nodes": 2, "gpusPerNode": 8}
    assert spec["training"]["trainSteps"] == 5000
    assert spec["training"]["checkpointInterval"] == 250
    assert spec["training"]["seed"] == 1234
    assert spec["training"]["learningRate"]["decay"] == "linear"
    # tensor 2 x pipeline 2 in the train file: mapped to data parallelism, with the memory cost named
    overrides = spec["model"]["overrides"]
    assert not {"tensorModelParallelSize", "pipelineModelParallelSize"} & set(overrides)
    assert build_run_spec(manifest).model.settings["pipelineModelParallelSize"] == 1
    mapped = [w for w in warnings if "pipeline_model_parallel_size 2" in w]
    assert len(mapped) == 1
    assert "tensor_model_parallel_size 2" in mapped[0]
    assert "data-parallel only" in mapped[0]
    assert "4x the memory per GPU" in mapped[0]
    # no group_query_attention in the file: one query group per head, as Megatron does
    assert overrides["numQueryGroups"] == overrides["numAttentionHeads"] == 16
    assert spec["model"]["overrides"]["maxPositionEmbeddings"] == 2048
    assert spec["env"] == [{"name": "NCCL_DEBUG", "value": "WARN"}]
    # arxiv_text_document and ArXiv_text_document clash after normalisation
    names = [m["name"] for m in spec["datasets"]["mixture"]]
    assert names[-2:] == ["papers-arxiv", "papers-arxiv-2"]
    assert any("valid_data_path" in w for w in warnings)
    assert any("hostfile" in w for w in warnings)
    assert any("CUDA_VISIBLE_DEVICES" in w for w in warnings)


def test_base_dir_option_wins() -> None:
    manifest, _ = import_experiment(FLAGSCALE, base_dir="/datasets")
    assert manifest["spec"]["datasets"]["baseDir"] == "/datasets"


# --- bad input: exit code 2, one line naming the field, no traceback -------------------------

TRAIN = (REPO / "tests/fixtures/flagscale/train/mix_7b_dense.yaml").read_text()
EXPERIMENT = FLAGSCALE.read_text()
BAD_INPUTS = {
    "malformed-yaml": (EXPERIMENT + "\n  broken: [\n", TRAIN, "malformed YAML"),
    "odd-data-path": (
        EXPERIMENT,
        TRAIN.replace("    - 4\n    - ${experiment.dataset_base_dir}/papers/ArXiv_text_document\n", "    - 4\n"),
        "train.data.data_path: has 13 entries, an odd number",
    ),
    "zero-weight": (EXPERIMENT, TRAIN.replace("    - 25\n", "    - 0\n"), "train.data.data_path[2]: weight 0"),
    "negative-weight": (EXPERIMENT, TRAIN.replace("    - 25\n", "    - -3\n"), "train.data.data_path[2]: weight -3"),
    "non-numeric-weight": (
        EXPERIMENT,
        TRAIN.replace("    - 25\n", "    - lots\n"),
        "train.data.data_path[2]: weight 'lots'",
    ),
    "same-path-twice": (EXPERIMENT, TRAIN.replace("web/zh/cc_2024", "web/en/cc_2024"), "appears twice"),
    "unresolvable-interpolation": (
        EXPERIMENT.replace("${experiment.corpus_root}", "${experiment.corpus_rot}"),
        TRAIN,
        "experiment.dataset_base_dir: cannot resolve ${experiment.corpus_rot}",
    ),
    "missing-train-file": (
        EXPERIMENT.replace("train: mix_7b_dense", "train: mix_13b"),
        TRAIN,
        "defaults.train: train file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    experiment, train, expected = BAD_INPUTS[case]
    (tmp_path / "train").mkdir()
    (tmp_path / "exp.yaml").write_text(experiment)
    (tmp_path / "train/mix_7b_dense.yaml").write_text(train)
    result = subprocess.run(
        [sys.executable, "-m", "datamix_cli", "import", str(tmp_path / "exp.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- hostile configs: bounded time and memory, one line, exit 2 -------------------------------


def _alias_bomb(levels: int = 12, fan_out: int = 10) -> str:
    """A "billion laughs": each level lists the previous one `fan_out` times (10**12 leaves)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * fan_out)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _interpolation_bomb(levels: int = 40) -> str:
    """Each key doubles the previous one's text through `${...}` (2**40 characters)."""
    lines = ["  s0: xxxxxxxxxxxxxxxx"]
    lines += [f"  s{i}: ${{experiment.s{i - 1}}}${{experiment.s{i - 1}}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias-bomb": (EXPERIMENT + "bomb:\n" + "\n".join("  " + line for line in _alias_bomb().splitlines()) + "\n",
                   "expands to more than"),
    "interpolation-bomb": (EXPERIMENT.replace("experiment:\n", "experiment:\n" + _interpolation_bomb(), 1),
                           "references nested in each other multiply"),
    "deep-nesting": (EXPERIMENT + "deep: " + "[" * 5000 + "]" * 5000 + "\n", "nesting depth"),
    "train-absolute-path": (EXPERIMENT.replace("train: mix_7b_dense", "train: /etc/passwd"),
                            "defaults.train: '/etc/passwd' must name a file in the train/ folder"),
    "train-parent-path": (EXPERIMENT.replace("train: mix_7b_dense", "train: ../../secrets/keys"),
                          "no absolute path, no '..'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_config_is_refused_fast_in_one_line(tmp_path: Path, case: str) -> None:
    import time
    import tracemalloc

    from datamix.errors import UserError

    experiment, expected = HOSTILE[case]
    (tmp_path / "train").mkdir()
    (tmp_path / "exp.yaml").write_text(experiment)
    (tmp_path / "train/mix_7b_dense.yaml").write_text(TRAIN)
    started = time.perf_counter()
    with pytest.raises(UserError) as err:
        import_experiment(tmp_path / "exp.yaml")
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    with pytest.raises(UserError):
        import_experiment(tmp_path / "exp.yaml")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{case}: refused in {elapsed * 1000:.0f} ms, peak Python memory {peak / 2**20:.1f} MiB")
    assert expected in str(err.value)
    # The bound (exit 2 within a second) for the import itself, measured in-process so that
    # the interpreter's start-up on a loaded machine does not count; memory well under a gigabyte.
    assert elapsed < 1.0, f"{case} took {elapsed:.2f} s"
    assert peak < 256 * 2**20, f"{case} peaked at {peak / 2**20:.0f} MiB"
    result = subprocess.run(
        [sys.executable, "-m", "datamix_cli", "import", str(tmp_path / "exp.yaml")],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_train_file_linked_from_outside_the_folder_is_refused(tmp_path: Path) -> None:
    from datamix.errors import UserError

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "mix.yaml").write_text(TRAIN)
    config_dir = tmp_path / "configs"
    (config_dir / "train").mkdir(parents=True)
    (config_dir / "exp.yaml").write_text(EXPERIMENT.replace("train: mix_7b_dense", "train: mix"))
    (config_dir / "train" / "mix.yaml").symlink_to(outside / "mix.yaml")
    with pytest.raises(UserError, match="outside"):
        import_experiment(config_dir / "exp.yaml")


def test_relative_tokenizer_path_is_not_imported() -> None:
    manifest, warnings = import_experiment(FLAGSCALE)
    assert manifest["spec"]["training"]["tokenizer"]["path"] == "/mnt/tokenizers/fs-tok"
    if BASELINE.exists():
        manifest, warnings = import_experiment(BASELINE)
        assert "path" not in manifest["spec"]["training"]["tokenizer"]
        assert any("tokenizer_path '../hf_openseek/tokenizer'" in w for w in warnings)
