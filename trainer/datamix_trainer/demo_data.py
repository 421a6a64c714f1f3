"""`datamix demo-data`: small Megatron indexed datasets from text every Python install has.

Six domains, each a different kind of text, so mixtures matter: Python source code, docstrings,
code comments, the language reference (`pydoc_data`), HTML documentation rendered by `pydoc`,
and license texts. Byte-level tokens (ids 0-255) with an end-of-document id 256: vocabulary 257,
as in `examples/quickstart.yaml`. Every tenth document (in a fixed order) goes to the domain's
validation set, so validation is held-out documents of the same domain.

Deterministic: the same Python installation gives byte-identical files. The folder is built in a
temporary sibling and renamed into place, so an interrupted build never looks complete.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import sys
import sysconfig
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path

VOCAB_SIZE = 257
EOD = 256
VERSION = 1
VALIDATION_EVERY = 10  # every 10th document is held out
MAX_DOMAIN_BYTES = 1_000_000  # per domain: enough for a quickstart, quick to build
MAX_DOC_BYTES = 32_000


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> list[Path]:
    """Pure-Python stdlib modules in a fixed order, without tests, demos and vendored copies."""
    root = stdlib_dir()
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    files = [
        p
        for p in root.rglob("*.py")
        if not (skip & set(p.relative_to(root).parts[:-1])) and not p.name.startswith("test_")
    ]
    # A fixed pseudo-random order (by hash of the path), so that a domain's first megabyte samples
    # the whole library rather than the modules whose names come first.
    return sorted(files, key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def python_code() -> Iterator[str]:
    for path in stdlib_sources():
        text = _read(path)
        if text and text.strip():
            yield text


def docstrings() -> Iterator[str]:
    """Each module's docstrings (module, classes, functions), one document per module."""
    for path in stdlib_sources():
        text = _read(path)
        if not text:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    found.append(doc)
        if found:
            yield "\n\n".join(found)


def comments() -> Iterator[str]:
    """Each module's `#` comments, one document per module: short prose about code."""
    for path in stdlib_sources():
        text = _read(path)
        if not text:
            continue
        lines = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(text).readline):
                if tok.type == tokenize.COMMENT and len(tok.string) > 3 and not tok.string.startswith("#!"):
                    lines.append(tok.string.lstrip("#").strip())
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        if len(lines) >= 5:
            yield "\n".join(lines)


def python_reference() -> Iterator[str]:
    """The language reference topics that `help()` shows (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


# fmt: off
HTML_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmath", "codecs", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "enum", "filecmp", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "locale", "logging", "math", "mimetypes", "numbers", "operator", "os",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil",
    "statistics", "string", "struct", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "types", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
    "zlib",
)
# fmt: on


def html_docs() -> Iterator[str]:
    """HTML pages that `pydoc -w` would write for a fixed list of modules (markup, not prose)."""
    import importlib
    import pydoc
    import re

    root = re.escape(str(stdlib_dir()))
    for name in HTML_MODULES:
        try:
            module = importlib.import_module(name)
            page = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, name))
        except Exception:  # a module that cannot be imported or rendered here is just left out
            continue
        # Links to local files would make the bytes depend on where Python is installed.
        yield re.sub(r"file:[^\"'<>]*" + root + r"[^\"'<>]*", "file:stdlib", page)


def licenses() -> Iterator[str]:
    """License texts: Python's own, the system's common licenses, installed distributions' files."""
    seen: set[str] = set()
    candidates = [stdlib_dir() / "LICENSE.txt"]
    common = Path("/usr/share/common-licenses")
    if common.is_dir():
        candidates += sorted(p for p in common.iterdir() if p.is_file())
    from importlib import metadata

    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        for f in sorted(dist.files or [], key=str):
            name = f.name.upper()
            if name.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")):
                candidates.append(Path(str(f.locate())))
    for path in candidates:
        text = _read(path)
        if text and len(text) > 200:
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest not in seen:  # the same license text ships with many packages
                seen.add(digest)
                yield text


DOMAINS: dict[str, Callable[[], Iterator[str]]] = {
    "python-code": python_code,
    "docstrings": docstrings,
    "comments": comments,
    "python-reference": python_reference,
    "html-docs": html_docs,
    "licenses": licenses,
}


def default_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "datamix" / "demo-data"


def _documents(source: Callable[[], Iterator[str]], max_bytes: int) -> list[bytes]:
    docs, total = [], 0
    for text in source():
        # Long documents are cut so that every domain has enough documents to hold some out.
        data = text.encode("utf-8")[: min(MAX_DOC_BYTES, max_bytes // 40)]
        if not data.strip():
            continue
        docs.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return docs


def _write(prefix: Path, docs: list[bytes]) -> int:
    import numpy as np

    from datamix_trainer.megatron_imports import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    tokens = 0
    for data in docs:
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        ids = np.append(ids, np.uint16(EOD))  # as Megatron's preprocess_data.py --append-eod
        builder.add_document(ids, [len(ids)])
        tokens += len(ids)
    builder.finalize(str(prefix) + ".idx")
    return tokens


def is_built(directory: Path) -> bool:
    info = directory / "demo-data.json"
    try:
        return json.loads(info.read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def build(
    directory: Path, log: Callable[[str], None] = print, force: bool = False, max_domain_bytes: int = MAX_DOMAIN_BYTES
) -> dict:
    """Build the demo datasets into `directory` (skipped if already built); tests pass a smaller
    `max_domain_bytes` to build faster."""
    directory = directory.resolve()
    if is_built(directory) and not force:
        return json.loads((directory / "demo-data.json").read_text())
    tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary: dict = {
        "version": VERSION,
        "tokenizer": {"type": "byte", "vocabSize": VOCAB_SIZE, "eodToken": EOD},
        "python": sys.version.split()[0],
        "max_domain_bytes": max_domain_bytes,
        "domains": {},
    }
    for name, source in DOMAINS.items():
        docs = _documents(source, max_domain_bytes)
        if len(docs) < 2 * VALIDATION_EVERY:
            raise RuntimeError(f"demo-data: too little text found for domain {name!r} ({len(docs)} documents)")
        train = [d for i, d in enumerate(docs) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
        valid = [d for i, d in enumerate(docs) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
        (tmp / name).mkdir()
        train_tokens = _write(tmp / name / "train_text_document", train)
        valid_tokens = _write(tmp / name / "validation_text_document", valid)
        summary["domains"][name] = {
            "path": f"{name}/train_text_document",
            "validationPath": f"{name}/validation_text_document",
            "documents": [len(train), len(valid)],
            "tokens": [train_tokens, valid_tokens],
        }
        log(f"  {name:<17} {len(train):>5} + {len(valid):>4} documents, {train_tokens:>9,} + {valid_tokens:>7,} tokens")
    (tmp / "demo-data.json").write_text(json.dumps(summary, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, directory)
    return summary
