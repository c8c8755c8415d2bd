"""What was wrong with a run's inputs, study by study.

A bad file, header or row must cost only its own study, and never silently: each fault is said when it is found
(a warning naming the study, the series and the file, which Jupyter shows and the headless runner echoes) and kept,
so that the run can end with a summary of what each study lost. One log serves a whole run, over threads too.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import pandas as pd

FAULT_COLUMNS = ("study_id", "series_id", "message")
"""Columns of a fault table (``FaultLog.frame``); ``series_id`` is -1 for a fault of the whole study."""


@dataclass(frozen=True)
class Fault:
    """One thing a study lost: a file, a slice, a series or a level, and why."""

    study_id: int
    series_id: int
    message: str

    def __str__(self) -> str:
        series = f" series {self.series_id}" if self.series_id >= 0 else ""
        return f"study {self.study_id}{series}: {self.message}"


class FaultLog:
    """The faults of a run, in the order they were found."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def report(self, study_id: int, series_id: int | None, message: str) -> None:
        """Say a fault now (a ``UserWarning``) and keep it for the summary."""
        warnings.warn(str(self.keep(study_id, series_id, message)), stacklevel=2)

    def keep(self, study_id: int, series_id: int | None, message: str) -> Fault:
        """Keep a fault for the summary (one already said, in a warning naming several at once, or by ``report``)."""
        fault = Fault(int(study_id), -1 if series_id is None else int(series_id), message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def __len__(self) -> int:
        return len(self._faults)

    def frame(self) -> pd.DataFrame:
        """The faults as a table (``FAULT_COLUMNS``)."""
        with self._lock:
            rows = [(f.study_id, f.series_id, f.message) for f in self._faults]
        return pd.DataFrame(rows, columns=list(FAULT_COLUMNS)).astype({"study_id": "int64", "series_id": "int64"})
