"""Lightning callbacks shared by the pipelines (imported lazily: they need Lightning).

* :func:`epoch_callback` — tells a dataset which epoch starts, so that its seeded per-item
  draws (augmentations, noise realisations) change from epoch to epoch but are reproducible:
  the dataset's ``set_epoch(epoch)`` is called at the start of every training epoch.
* :func:`time_budget_callback` — stops training after a wall-clock budget (benchmarks and the
  quickstart train "for N seconds"); the engine still exports the model.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["epoch_callback", "time_budget_callback"]


def epoch_callback(dataset: Any) -> Any:
    """A callback calling ``dataset.set_epoch(trainer.current_epoch)`` at each epoch start."""
    from lightning.pytorch.callbacks import Callback

    if not callable(getattr(dataset, "set_epoch", None)):
        raise ValueError(f"epoch_callback: {type(dataset).__name__} has no set_epoch(epoch)")

    class _SetEpoch(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            dataset.set_epoch(trainer.current_epoch)

    return _SetEpoch()


def time_budget_callback(seconds: float) -> Any:
    """A callback that stops training after ``seconds`` of wall time (> 0), counted from its
    creation, checked after every training batch."""
    from lightning.pytorch.callbacks import Callback

    if not (isinstance(seconds, int | float) and seconds > 0):
        raise ValueError(f"time_budget_callback: seconds must be > 0, got {seconds!r}")

    class _Budget(Callback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if time.perf_counter() - self.t0 > seconds:
                trainer.should_stop = True

    return _Budget()
