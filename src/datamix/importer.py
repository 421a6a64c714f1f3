"""`datamix import`: an OpenSeek/FlagScale (Hydra) experiment config to a DataMixtureExperiment.

The experiment file names its train file in `defaults: - train: NAME`; Hydra places that file
under the key `train`, and both use OmegaConf `${...}` interpolations. Every field that has no
place in the manifest is named in a warning.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from datamix import API_VERSION, KIND
from datamix.errors import UserError
from datamix.experiment import DEFAULT_BASE_DIR
from datamix.presets import MODEL_PARALLEL_SETTINGS, MODEL_SETTINGS, PRESETS
from datamix.schema import MAX_NAME_LENGTH
from datamix.yamlfile import read_yaml_documents

_INTERPOLATION = re.compile(r"\$\{([^${}]+)\}")
# Bounds on what a config may make the importer do. Real OpenSeek/FlagScale configs have a few
# hundred values and short strings; YAML aliases and `${...}` chains can multiply a small file
# exponentially (a "billion laughs"), so the resolved tree (the OpenSeek baseline has 398 values),
# each string and the number of lookups are capped (and datamix.yamlfile reads a file only up to a size).
MAX_NODES = 20_000
MAX_DEPTH = 64
MAX_STRING_LENGTH = 64 * 1024
MAX_LOOKUPS = 10_000
# Fields that have a place elsewhere or no meaning on Kubernetes, with the advice we give.
_ADVICE = {
    "train.data.valid_data_path": "set validationPath on each mixture entry instead",
    "train.data.data_args_path": "list the blend in data_path to import it",
    "train.data.per_split_data_args_path": "list the blend in data_path to import it",
    "experiment.cmds": "shell commands and environment activation belong in the trainer image",
    "experiment.runner.hostfile": "Kubernetes places the pods; use spec.resources",
}
_DROPPED_ENV = {"VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"}


def import_experiment(config: Path, base_dir: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Return the manifest and the warnings for an experiment config file."""
    root = _compose(config)
    resolver = _Resolver(root)
    tree = resolver.resolve(root, "")
    reader = _Reader(tree)
    warnings: list[str] = []

    name = _object_name(str(reader.get("experiment.exp_name", config.stem)), warnings)
    mixture, base = _mixture(reader, base_dir, warnings)
    preset, overrides = _model(reader, warnings)
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "datasets": {"baseDir": base, "mixture": mixture},
            "model": {"preset": preset, **({"overrides": overrides} if overrides else {})},
            "training": _training(reader, warnings),
            "resources": {
                "nodes": _positive_int(reader, "experiment.runner.nnodes", 1),
                "gpusPerNode": _positive_int(reader, "experiment.runner.nproc_per_node", 1),
            },
        },
    }
    env = _env(reader, warnings)
    if env:
        manifest["spec"]["env"] = env
    for path, value in reader.unread(resolver.referenced):
        advice = next((a for prefix, a in _ADVICE.items() if path == prefix or path.startswith(prefix + ".")), None)
        if advice:
            warnings.append(f"{path} ({_short(value)}) was not imported: {advice}")
    rest = [p for p, _ in reader.unread(resolver.referenced) if not any(p.startswith(a) for a in _ADVICE)]
    if rest:
        warnings.append(f"{len(rest)} fields have no place in a {KIND} and were not imported: {', '.join(rest)}")
    return manifest, warnings


# --- reading and composing the config -------------------------------------------------------


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    docs = read_yaml_documents(path, what)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        found = type(docs[0]).__name__ if len(docs) == 1 else f"{len(docs)} documents"
        raise UserError(f"{what}: {path} must hold one YAML mapping, not {found}")
    doc: dict[str, Any] = docs[0]
    return doc


def _compose(config: Path) -> dict[str, Any]:
    root = _load_yaml(config, "config")
    defaults = root.pop("defaults", None) or []
    train_name = next((d["train"] for d in defaults if isinstance(d, dict) and "train" in d), None)
    if train_name is None:
        raise UserError(f"defaults: {config} has no `- train: NAME` entry; add the train file's name to defaults")
    train_file = _train_file(config, str(train_name))
    if not train_file.is_file():
        raise UserError(
            f"defaults.train: train file {train_file} not found; put {train_file.name} in the train/ folder "
            f"beside {config.name} or fix the name"
        )
    root["train"] = _load_yaml(train_file, "defaults.train")
    return root


def _train_file(config: Path, name: str) -> Path:
    """Hydra's `train` group: a file of the config's own `train/` folder, never one elsewhere."""
    folder = config.parent / "train"
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise UserError(
            f"defaults.train: {name!r} must name a file in the train/ folder beside {config.name} "
            "(no absolute path, no '..')"
        )
    train_file = folder / name
    if train_file.suffix not in (".yaml", ".yml"):
        train_file = train_file.with_name(train_file.name + ".yaml")
    # A symbolic link may still point elsewhere: what counts is where the file really is.
    if train_file.exists() and not train_file.resolve().is_relative_to(config.parent.resolve()):
        raise UserError(
            f"defaults.train: {train_file} resolves to {train_file.resolve()}, outside {config.parent}; "
            "copy the train file into the config's folder"
        )
    return train_file


class _Resolver:
    """OmegaConf-style interpolation: `${a.b}` (absolute), `${oc.env:VAR[,default]}`, nesting."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.referenced: set[str] = set()
        self._active: list[str] = []
        self._nodes = 0
        self._lookups = 0

    def resolve(self, node: Any, path: str, depth: int = 0) -> Any:
        # YAML aliases share one node between places; resolving copies it into each place, so the
        # copies are counted: a file of aliases of aliases stops here instead of filling memory.
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise UserError(
                f"{path or 'config'}: the config expands to more than {MAX_NODES} values (YAML aliases or "
                "`${...}` references nested in each other); it is not an experiment config"
            )
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: nested more than {MAX_DEPTH} levels deep; it is not an experiment config")
        if isinstance(node, dict):
            return {k: self.resolve(v, f"{path}.{k}".lstrip("."), depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return self._interpolate(node, path, depth)
        return node

    def _interpolate(self, text: str, path: str, depth: int) -> Any:
        whole = _INTERPOLATION.fullmatch(text)
        if whole:
            return self._lookup(whole.group(1).strip(), path, depth)
        while True:
            match = _INTERPOLATION.search(text)
            if not match:
                break
            value = str(self._lookup(match.group(1).strip(), path, depth))
            if len(text) - (match.end() - match.start()) + len(value) > MAX_STRING_LENGTH:
                raise UserError(
                    f"{path}: interpolating {text[:40]!r} gives a string longer than {MAX_STRING_LENGTH} "
                    "characters; references nested in each other multiply, remove the repetition"
                )
            text = text[: match.start()] + value + text[match.end() :]
        if "${" in text:
            raise UserError(f"{path}: cannot resolve {text!r}: unbalanced interpolation; fix the braces")
        return text

    def _lookup(self, ref: str, path: str, depth: int) -> Any:
        self._lookups += 1
        if self._lookups > MAX_LOOKUPS:
            raise UserError(
                f"{path}: more than {MAX_LOOKUPS} `${{...}}` lookups; references nested in each other multiply, "
                "it is not an experiment config"
            )
        if ref.startswith("oc.env:"):
            var, _, default = ref[len("oc.env:") :].partition(",")
            value = os.environ.get(var.strip(), default.strip() if default else None)
            if value is None:
                raise UserError(f"{path}: cannot resolve ${{{ref}}}: environment variable {var} is not set; set it")
            return value
        if ":" in ref or ref.startswith("."):
            raise UserError(f"{path}: cannot resolve ${{{ref}}}: only absolute references and oc.env are supported")
        if ref in self._active:
            raise UserError(
                f"{path}: cannot resolve ${{{ref}}}: it refers to itself through {' -> '.join(self._active)}"
            )
        node: Any = self.root
        for part in ref.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(
                    f"{path}: cannot resolve ${{{ref}}}: there is no key {ref}; define it or fix the reference"
                )
            node = node[part]
        self.referenced.add(ref)
        self._active.append(ref)
        try:
            return self.resolve(node, ref, depth + 1)
        finally:
            self._active.pop()


class _Reader:
    """Reads dotted paths of the resolved tree and remembers which leaves were read."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self.tree = tree
        self.read: set[str] = set()

    def has(self, path: str) -> bool:
        return self._find(path) is not _MISSING

    def get(self, path: str, default: Any = None) -> Any:
        value = self._find(path)
        if value is _MISSING:
            return default
        self.read.add(path)
        return value

    def first(self, *paths: str) -> tuple[str, Any] | None:
        for path in paths:
            if self.has(path) and self._find(path) is not None:
                return path, self.get(path)
        return None

    def _find(self, path: str) -> Any:
        node: Any = self.tree
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def unread(self, referenced: set[str]) -> list[tuple[str, Any]]:
        used = self.read | referenced
        out: list[tuple[str, Any]] = []

        def walk(node: Any, path: str) -> None:
            if path and any(path == u or path.startswith(u + ".") for u in used):
                return
            if isinstance(node, dict) and node:
                for key, value in node.items():
                    walk(value, f"{path}.{key}".lstrip("."))
            elif path:
                out.append((path, node))

        walk(self.tree, "")
        return out


_MISSING = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- mapping ----------------------------------------------------------------------------------


def _object_name(exp_name: str, warnings: list[str]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", exp_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"exp-{name}".rstrip("-")
    name = name[:MAX_NAME_LENGTH].rstrip("-")
    if name != exp_name:
        warnings.append(f"experiment.exp_name {exp_name!r} became metadata.name {name!r} (a DNS-1035 label)")
    return name


def _dataset_name(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".", "..")][-2:]
    stem = "-".join(parts)
    stem = re.sub(r"_text_document$", "", stem)
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "dataset"
    return name if len(name) <= 63 else _shorten(name, path, 63)


def _shorten(name: str, key: str, limit: int) -> str:
    """Cut a name to `limit` characters, keeping it unique with a hash of `key`."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def _mixture(reader: _Reader, base_dir: str | None, warnings: list[str]) -> tuple[list[dict[str, Any]], str]:
    field = "train.data.data_path"
    raw = reader.get(field)
    if raw is None:
        raise UserError(f"{field}: missing; list the blend as weight, path, weight, path, ...")
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise UserError(f"{field}: must be a list of weight, path pairs")
    if len(items) % 2:
        raise UserError(
            f"{field}: has {len(items)} entries, an odd number; it must alternate weight and path "
            "(a weight or a path is missing)"
        )
    pairs: list[tuple[float, str]] = []
    seen: dict[str, int] = {}
    for i in range(0, len(items), 2):
        weight, path = items[i], items[i + 1]
        try:
            w = float(weight)
            valid = math.isfinite(w) and w > 0 and not isinstance(weight, bool)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise UserError(
                f"{field}[{i}]: weight {weight!r} must be a number greater than 0 (the entry before path {path!r})"
            )
        if not isinstance(path, str) or not path.strip():
            raise UserError(f"{field}[{i + 1}]: {path!r} is not a dataset path; entries must alternate weight and path")
        normal = posixpath.normpath(path)
        if normal in seen:
            raise UserError(
                f"{field}[{i + 1}]: path {path!r} appears twice (also at [{seen[normal]}]); merge the two entries"
            )
        seen[normal] = i + 1
        pairs.append((weight if isinstance(weight, int | float) else w, normal))

    source_base = reader.get("experiment.dataset_base_dir")
    paths = [p for _, p in pairs]
    if source_base is None or not all(p.startswith(posixpath.normpath(str(source_base)) + "/") for p in paths):
        source_base = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
        if any(p == source_base for p in paths):
            source_base = posixpath.dirname(source_base)
    source_base = posixpath.normpath(str(source_base))
    if base_dir:
        base = base_dir
    elif posixpath.isabs(source_base):
        base = source_base
    else:
        tail = posixpath.basename(source_base) if source_base not in (".", "..") else ""
        base = posixpath.join(DEFAULT_BASE_DIR, tail) if tail else DEFAULT_BASE_DIR
        warnings.append(
            f"experiment.dataset_base_dir {source_base!r} is relative; the manifest's datasets.baseDir is {base!r} "
            f"under the data mount (pass --base-dir to choose another)"
        )

    names: dict[str, int] = {}
    mixture = []
    for weight, path in pairs:
        rel = posixpath.relpath(path, source_base)
        name = _dataset_name(rel)
        count = names.get(name, 0) + 1
        names[name] = count
        if count > 1:
            suffix = f"-{count}"
            name = name[: 63 - len(suffix)].rstrip("-") + suffix
        mixture.append({"name": name, "path": rel, "weight": weight})
    return mixture, base


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _model(reader: _Reader, warnings: list[str]) -> tuple[str, dict[str, Any]]:
    found: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section in ("train.model", "train.system", "train.system.precision", "train.model.optimizer"):
        node = reader.get(section, {}) if reader.has(section) else {}
        reader.read.discard(section)
        for key, value in node.items() if isinstance(node, dict) else []:
            setting = _camel(key)
            if setting in MODEL_SETTINGS and not isinstance(value, dict):
                found[setting] = _coerce(reader.get(f"{section}.{key}"), MODEL_SETTINGS[setting])
                origin[setting] = f"{section}.{key}"
    if "bf16" not in found and reader.has("train.system.precision.fp16"):
        found["bf16"] = False
    # Megatron uses num_query_groups only with group_query_attention; without it, one group per head.
    if "numAttentionHeads" in found and not found.get("groupQueryAttention") and "numQueryGroups" not in found:
        found["numQueryGroups"] = found["numAttentionHeads"]
    _data_parallel_only(found, origin, warnings)

    def distance(preset: str) -> int:
        return sum(1 for k, v in found.items() if PRESETS[preset].get(k) != v)

    preset = min(PRESETS, key=distance)
    overrides = {k: v for k, v in sorted(found.items()) if PRESETS[preset].get(k) != v}
    return preset, overrides


def _data_parallel_only(found: dict[str, Any], origin: dict[str, str], warnings: list[str]) -> None:
    """Model parallelism becomes 1 (the trainer is data-parallel only), with what that costs."""
    mapped = {k: found[k] for k in MODEL_PARALLEL_SETTINGS if isinstance(found.get(k), int) and found[k] > 1}
    if not mapped:
        return
    factor = math.prod(v for k, v in mapped.items() if k != "expertModelParallelSize")
    for key in mapped:
        found[key] = 1
    sizes = ", ".join(f"{origin[k]} {v}" for k, v in mapped.items())
    warnings.append(
        f"{sizes} imported as 1: the trainer is data-parallel only, so every GPU holds the whole model with "
        f"its gradients and optimizer state (about 16 bytes per parameter): up to {factor}x the memory per GPU "
        "the model-parallel layout needed"
        + (", and all experts on every GPU" if "expertModelParallelSize" in mapped else "")
        + "; if it does not fit, lower microBatchSize or use GPUs with more memory"
    )


def _coerce(value: Any, kind: type) -> Any:
    """YAML 1.1 reads `6e-3` as a string; OmegaConf (and so FlagScale) reads it as a number."""
    if kind in (int, float) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind is int and number.is_integer() else number
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _positive_int(reader: _Reader, path: str, default: int) -> int:
    value = reader.get(path, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(
            f"{path}: {value!r} must be a whole number (elastic ranges are not supported); set a fixed count"
        )
    return value


def _training(reader: _Reader, warnings: list[str]) -> dict[str, Any]:
    m = "train.model"
    training: dict[str, Any] = {}
    for key, target in (
        ("seq_length", "seqLength"),
        ("global_batch_size", "globalBatchSize"),
        ("micro_batch_size", "microBatchSize"),
    ):
        value = reader.get(f"{m}.{key}")
        if value is None:
            raise UserError(f"{m}.{key}: missing; the manifest needs training.{target}")
        training[target] = _positive_int(reader, f"{m}.{key}", 0)
    length = reader.first(f"{m}.train_samples", f"{m}.train_tokens", f"{m}.train_iters")
    if length is None:
        raise UserError(f"{m}: set one of train_samples, train_tokens or train_iters")
    path, value = length
    target = {"train_samples": "trainSamples", "train_tokens": "trainTokens", "train_iters": "trainSteps"}[
        path.rsplit(".", 1)[1]
    ]
    training[target] = _positive_int(reader, path, 0)

    sched = f"{m}.optimizer.lr_scheduler"
    lr: dict[str, Any] = {}
    for key, target in (("lr", "peak"), ("min_lr", "min"), ("lr_warmup_samples", "warmupSamples")):
        value = reader.get(f"{sched}.{key}", reader.get(f"{m}.{key}"))
        if value is not None:
            lr[target] = float(value) if target != "warmupSamples" else int(value)
    if "peak" not in lr:
        raise UserError(f"{sched}.lr: missing; the manifest needs training.learningRate.peak")
    decay = reader.get(f"{sched}.lr_decay_style", reader.get(f"{m}.lr_decay_style"))
    if decay is not None:
        if decay in ("cosine", "linear", "constant"):
            lr["decay"] = decay
        else:
            warnings.append(f"{sched}.lr_decay_style {decay!r} is not supported; imported as cosine")
            lr["decay"] = "cosine"
    training["learningRate"] = lr

    seed = reader.first(f"{m}.seed", "experiment.seed")
    if seed is not None:
        training["seed"] = int(seed[1])
    interval = reader.first("train.system.checkpoint.save_interval", "experiment.save_steps")
    if interval is not None and interval[1]:
        training["checkpointInterval"] = int(interval[1])
    for key, target in (("eval_interval", "evalInterval"), ("log_interval", "logInterval")):
        found = reader.first(f"{m}.{key}", f"train.system.logging.{key}", f"train.system.{key}")
        if found is not None and found[1]:
            training[target] = int(found[1])
    eval_iters = reader.get(f"{m}.eval_iters")
    if eval_iters:
        training["evalSamples"] = int(eval_iters) * training["globalBatchSize"]

    tok = "train.data.tokenizer"
    vocab = reader.get(f"{tok}.vocab_size")
    if vocab is None:
        raise UserError(f"{tok}.vocab_size: missing; add the tokenizer's vocabulary size")
    tokenizer: dict[str, Any] = {"type": str(reader.get(f"{tok}.tokenizer_type", "unknown")), "vocabSize": int(vocab)}
    tok_path = reader.get(f"{tok}.tokenizer_path")
    if tok_path and posixpath.isabs(str(tok_path)) and ".." not in str(tok_path).split("/"):
        tokenizer["path"] = str(tok_path)
    elif tok_path:
        warnings.append(
            f"{tok}.tokenizer_path {str(tok_path)!r} is relative to the launch directory and was not imported; "
            "set spec.training.tokenizer.path to where the tokenizer is in the pods"
        )
    training["tokenizer"] = tokenizer
    return training


def _env(reader: _Reader, warnings: list[str]) -> list[dict[str, str]]:
    envs = reader.get("experiment.envs") or {}
    env = []
    for key, value in envs.items():
        if key in _DROPPED_ENV:
            warnings.append(f"experiment.envs.{key} was not imported: Kubernetes assigns the devices")
            continue
        env.append({"name": str(key), "value": str(value)})
    return env
