"""Reading YAML files given by a user (manifests, OpenSeek/FlagScale configs): one home for the
parser, its bounds and its error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datamix.errors import UserError

# Real manifests and configs are a few KB; the bound stops a mistaken path (a dataset, a log)
# from being parsed at all.
MAX_YAML_BYTES = 4 * 1024 * 1024
# libyaml parses in C and refuses nesting deeper than 1000 levels at once; the pure-Python parser
# takes seconds on a few thousand nested brackets before it overflows the stack.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)



def read_yaml_documents(path: str | Path, what: str) -> list[Any]:
    """The documents of a YAML file (empty ones left out), parsed safely; every problem is a
    UserError of one line that starts with `what` (the field or option that named the file)."""
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise UserError(f"{what}: {path} is larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB; is it a config?")
        return [doc for doc in yaml.load_all(data, Loader=_LOADER) if doc is not None]  # a safe loader
    except OSError as err:
        raise UserError(f"{what}: cannot read {path} ({err.strerror}); check the path") from err
    except RecursionError as err:
        raise UserError(f"{what}: {path} is nested too deeply to be a config") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{what}: malformed YAML in {path}{where}: {problem}; fix the syntax") from err
