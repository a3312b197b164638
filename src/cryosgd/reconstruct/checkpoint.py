"""Checkpoints: everything a killed run needs to continue, written atomically, and the key of
the settings under which a checkpoint may be resumed."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..io import InputError
from .settings import Settings

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_key", "NOT_IN_CHECKPOINT_KEY"]


def save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the output folder appears with the first checkpoint
    tmp = path.with_name(path.name + ".part")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# where and how fast a run computes, not what: a run may resume with other values of these
NOT_IN_CHECKPOINT_KEY = ("device", "precision", "memory_budget", "checkpoint_every")


def checkpoint_key(settings: Settings) -> str:
    """The settings that change the result, as text: a checkpoint resumes only under the same key."""
    # gold_standard and noise_substitution are left out too: the gold standard's stages keep their own
    # checkpoint files (halves.py), so a run started without noise substitution can add it and keep its
    # start and halves, and a plain run's key stays what it was before the fields existed
    fields = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in NOT_IN_CHECKPOINT_KEY and k not in ("gold_standard", "noise_substitution")}
    return json.dumps(fields, sort_keys=True, default=str)


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise InputError(path, f"not a readable checkpoint ({err.__class__.__name__})") from None
