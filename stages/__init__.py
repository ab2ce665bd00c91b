"""The five stages, and the one list of them.

A stage is a module here that provides what `lineage.contract.Stage` describes. To add one,
write `stages/<name>.py` and put its name in STAGES, in the order `run` runs it; the CLI gets a
subcommand and the config a section of that name (tests/test_contract.py checks all three).
Stage modules import TensorFlow only inside `run`, so loading one is cheap.
"""

from __future__ import annotations

import importlib

from lineage.contract import Stage, check_stage
from lineage.errors import UserError

STAGES = ("ingest", "split", "train", "infer", "evaluate")


def load_stage(name: str) -> Stage:
    """The stage module of this name, checked against the contract."""
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}: stages are {', '.join(STAGES)}")
    return check_stage(importlib.import_module(f"stages.{name}"))
