"""The trials table: one row per finished trial, its shares and its per-domain validation losses.

Olmix's data contract (mixture ratios per run, metrics per run) in one table. The CSV form is
what `datamix sweep fit` reads and `datamix sweep run` writes: a header `trial`, then
`share:<domain>` for every domain of the mixture, then `loss:<domain>` for every evaluated
domain (a domain may be evaluated without a share column: held out of training entirely).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamix.errors import UserError

SHARE_PREFIX = "share:"
LOSS_PREFIX = "loss:"
# Rows are mixtures: their shares must sum to 1 within this (a CSV written with 4 decimals passes).
ROW_SUM_TOLERANCE = 1e-3
MIN_TRIALS = 4  # fewer cannot be cross-validated


@dataclass(frozen=True)
class TrialTable:
    trials: tuple[str, ...]
    domains: tuple[str, ...]  # the mixture's domains (share columns)
    shares: np.ndarray  # trials x domains, rows summing to 1
    loss_domains: tuple[str, ...]  # evaluated domains (loss columns)
    losses: np.ndarray  # trials x loss_domains, finite

    def __post_init__(self) -> None:
        if self.shares.shape != (len(self.trials), len(self.domains)):
            raise ValueError("shares do not match trials x domains")
        if self.losses.shape != (len(self.trials), len(self.loss_domains)):
            raise ValueError("losses do not match trials x loss domains")

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ["trial", *(SHARE_PREFIX + d for d in self.domains), *(LOSS_PREFIX + d for d in self.loss_domains)]
        )
        for trial, shares, losses in zip(self.trials, self.shares, self.losses, strict=True):
            writer.writerow([trial, *(repr(float(s)) for s in shares), *(f"{float(v):.6g}" for v in losses)])
        return out.getvalue()


def read_csv(path: str | Path) -> TrialTable:
    """Read and check a trials CSV; the first problem is a UserError naming the row or column."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror}); check the path") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file; expected a CSV with a header row") from err
    return parse_csv(text, str(path))


def parse_csv(text: str, where: str = "TRIALS.csv") -> TrialTable:
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise UserError(f"{where}: malformed CSV ({err}); fix the quoting") from err
    if not rows:
        raise UserError(f"{where}: empty; expected a header `trial,share:<domain>...,loss:<domain>...` and rows")
    header = [cell.strip() for cell in rows[0]]
    if header[0] != "trial":
        raise UserError(f"{where}: the first column is {header[0]!r}; the header must start with `trial`")
    if len(set(header)) != len(header):
        duplicate = next(h for h in header if header.count(h) > 1)
        raise UserError(f"{where}: column {duplicate!r} appears twice in the header; keep one")
    share_cols: list[int] = []
    loss_cols: list[int] = []
    for i, name in enumerate(header[1:], start=1):
        prefix, domain = (
            (SHARE_PREFIX, name[len(SHARE_PREFIX) :])
            if name.startswith(SHARE_PREFIX)
            else ((LOSS_PREFIX, name[len(LOSS_PREFIX) :]) if name.startswith(LOSS_PREFIX) else ("", ""))
        )
        if not prefix:
            raise UserError(f"{where}: column {name!r} is neither `share:<domain>` nor `loss:<domain>`; rename it")
        if not domain:
            raise UserError(f"{where}: column {name!r} has no domain name after the prefix")
        if prefix == SHARE_PREFIX:
            if loss_cols:
                raise UserError(f"{where}: column {name!r} comes after a loss column; put every share column first")
            share_cols.append(i)
        else:
            loss_cols.append(i)
    if not share_cols:
        raise UserError(f"{where}: no `share:<domain>` columns; the table needs each trial's mixture")
    if not loss_cols:
        raise UserError(f"{where}: no `loss:<domain>` columns; the table needs each trial's validation losses")
    body = rows[1:]
    if len(body) < MIN_TRIALS:
        raise UserError(f"{where}: {len(body)} trial rows; a fit needs at least {MIN_TRIALS}")
    trials: list[str] = []
    values = np.empty((len(body), len(header) - 1))
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(f"{where}: line {r} has {len(row)} cells, the header {len(header)}; fix the row")
        trial = row[0].strip()
        if not trial:
            raise UserError(f"{where}: line {r} has an empty `trial` cell; name every trial")
        if trial in trials:
            raise UserError(f"{where}: line {r}: trial {trial!r} appears twice; keep one row per trial")
        trials.append(trial)
        for c in range(1, len(header)):
            cell = row[c].strip()
            try:
                value = float(cell)
            except ValueError:
                raise UserError(f"{where}: line {r}, column {header[c]!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise UserError(f"{where}: line {r}, column {header[c]!r}: {cell!r} is not a finite number")
            values[r - 2, c - 1] = value
    shares = values[:, [c - 1 for c in share_cols]]
    losses = values[:, [c - 1 for c in loss_cols]]
    for r in range(len(body)):
        negative = np.flatnonzero(shares[r] < 0)
        if negative.size:
            column = header[share_cols[int(negative[0])]]
            raise UserError(f"{where}: line {r + 2}, column {column!r}: a share cannot be negative")
        total = float(shares[r].sum())
        if abs(total - 1.0) > ROW_SUM_TOLERANCE:
            raise UserError(f"{where}: line {r + 2}: the shares sum to {total:.6g}, not 1; give each trial's mixture")
    if np.all(np.ptp(shares, axis=0) == 0):
        raise UserError(f"{where}: every trial has the same mixture; a fit needs trials with different mixtures")
    shares = shares / shares.sum(axis=1, keepdims=True)
    return TrialTable(
        trials=tuple(trials),
        domains=tuple(header[c][len(SHARE_PREFIX) :] for c in share_cols),
        shares=shares,
        loss_domains=tuple(header[c][len(LOSS_PREFIX) :] for c in loss_cols),
        losses=losses,
    )


def objective_weights(table: TrialTable, weights: dict[str, float] | None, field: str = "objective") -> np.ndarray:
    """Weights over the table's loss columns, normalised to sum 1; default: the mean of them all."""
    if not weights:
        return np.full(len(table.loss_domains), 1.0 / len(table.loss_domains))
    vector = np.zeros(len(table.loss_domains))
    for name, value in weights.items():
        if name not in table.loss_domains:
            raise UserError(
                f"{field}: {name!r} has no validation loss in the trials (evaluated: {', '.join(table.loss_domains)}); "
                "weight only evaluated domains"
            )
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise UserError(f"{field}: {name}={value!r}; a weight must be a finite number >= 0")
        vector[table.loss_domains.index(name)] = float(value)
    if vector.sum() <= 0:
        raise UserError(f"{field}: every weight is 0; give at least one domain a weight above 0")
    return np.asarray(vector / vector.sum())
