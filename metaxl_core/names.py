"""Dataset names "task:dataset:language" (e.g. "ner:masakhaner2:yor"): the tasks and the one
parser of such names, used by the trial config, the data layer and the sweep tooling.

    spec = DataSpec.parse("ner:masakhaner2:yor")  # DataSpec(task="ner", dataset=..., lang="yor")
    language_of("ner:masakhaner2:yor")            # "yor"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metaxl_core.errors import DataError

TASKS = ("ner", "sentiment")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DataSpec:
    """A dataset name "task:dataset:language", e.g. "ner:masakhaner2:yor"."""

    task: str
    dataset: str
    lang: str

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """The parts of `text`; DataError naming it when it is not a valid dataset name."""
        parts = str(text).split(":")
        if len(parts) != 3 or not all(_PART.fullmatch(p) for p in parts):
            raise DataError(f"dataset name {text!r}: expected 'task:dataset:language' made of "
                            "letters, digits, '_', '-', '.', e.g. 'ner:masakhaner2:yor'")
        if parts[0] not in TASKS:
            raise DataError(f"dataset name {text!r}: task must be one of {TASKS}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.task}:{self.dataset}:{self.lang}"


def language_of(name: str) -> str:
    """The language of a dataset name: "yor" for "ner:masakhaner2:yor"."""
    return DataSpec.parse(name).lang
