"""Megatron indexed datasets (`<prefix>.bin` / `<prefix>.idx`) checked without megatron or torch.

The trainer calls `check_run_data` before it imports anything heavy or starts a process group,
so a missing or damaged file fails in a second, with the file named, on every rank (no rank
waits at a barrier for another that died). The `.idx` layout, as megatron-core writes it:

    9 bytes  magic b"MMIDIDX\\x00\\x00"
    8 bytes  version (1), little-endian
    1 byte   dtype code of the tokens in .bin (8 = uint16, 4 = int32, ...)
    8 bytes  sequence count S
    8 bytes  document count D (document boundaries, the first is 0)
    4*S      sequence lengths (int32)
    8*S      byte offsets of the sequences in .bin (int64)
    8*D      document boundaries (int64)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from datamix.errors import UserError
from datamix.runspec import RunSpec

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34
# megatron.core.datasets.indexed_dataset.DType codes.
DTYPES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
# Tokens read to check that ids fit the vocabulary: enough to catch a wrong tokenizer, cheap on
# terabytes of data.
TOKEN_PROBE = 1 << 20


@dataclass(frozen=True)
class IndexedInfo:
    prefix: str
    dtype: type[np.generic]
    sequences: int
    documents: int  # real documents (boundaries - 1)
    tokens: int


def check_indexed(prefix: str, vocab_size: int | None = None, field: str = "dataset") -> IndexedInfo:
    """Check `<prefix>.idx` and `<prefix>.bin` agree with each other (and the vocabulary)."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise UserError(f"{field}: {path} does not exist; check datasets.baseDir and the path")

    def corrupt(why: str, path: str = idx_path) -> UserError:
        return UserError(f"{field}: {path} is corrupt ({why}); re-run the preprocessing that wrote it")

    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as stream:
        header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:9] != MAGIC:
        raise corrupt("not a Megatron index: bad magic or short header")
    version, code, sequences, boundaries = struct.unpack("<QBQQ", header[9:])
    if version != 1:
        raise corrupt(f"index version {version}, expected 1")
    if code not in DTYPES:
        raise corrupt(f"unknown token dtype code {code}")
    expected_idx = HEADER_BYTES + 12 * sequences + 8 * boundaries
    # Multimodal indices add one int8 mode per sequence; accept both.
    if idx_size not in (expected_idx, expected_idx + sequences):
        raise corrupt(f"{idx_size} bytes, expected {expected_idx} for {sequences} sequences")
    dtype = DTYPES[code]
    itemsize = np.dtype(dtype).itemsize
    index = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(index, dtype=np.int32, count=sequences, offset=HEADER_BYTES)
    pointers = np.frombuffer(index, dtype=np.int64, count=sequences, offset=HEADER_BYTES + 4 * sequences)
    tokens = int(lengths.sum(dtype=np.int64))
    bin_size = os.path.getsize(bin_path)
    if sequences and (lengths.min() < 0 or int(pointers[-1]) + int(lengths[-1]) * itemsize != tokens * itemsize):
        raise corrupt("sequence offsets do not match the sequence lengths")
    if bin_size != tokens * itemsize:
        raise corrupt(f"{bin_size} bytes, the index describes {tokens * itemsize}", bin_path)
    if tokens == 0:
        raise UserError(f"{field}: {bin_path} holds no tokens; a dataset needs at least one document")
    if vocab_size is not None and np.issubdtype(dtype, np.integer):
        probe = np.memmap(bin_path, mode="r", dtype=dtype, shape=(min(tokens, TOKEN_PROBE),))
        top = int(probe.max())
        if top >= vocab_size:
            raise UserError(
                f"{field}: {bin_path} holds token id {top}, but training.tokenizer.vocabSize is {vocab_size}; "
                "use the tokenizer the data was preprocessed with"
            )
    return IndexedInfo(prefix, dtype, int(sequences), int(boundaries) - 1, tokens)


def check_run_data(spec: RunSpec) -> list[tuple[IndexedInfo, IndexedInfo | None]]:
    """Check every training and validation file of the run; the first problem is a UserError."""
    vocab = spec.training.vocab_size
    checked = []
    for i, d in enumerate(spec.datasets):
        train = check_indexed(d.path, vocab, f"datasets.mixture[{i}] ({d.name}) path")
        valid = None
        if d.validation_path:
            valid = check_indexed(d.validation_path, vocab, f"datasets.mixture[{i}] ({d.name}) validationPath")
        checked.append((train, valid))
    return checked
