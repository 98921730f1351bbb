"""The composition root: ``visiontrain.train`` wires data, model, engine and callbacks from one config.

:mod:`~visiontrain.trainer.training` holds ``train``/``find_lr`` and the wiring, :mod:`~visiontrain.trainer.folders`
the run folder and its config, :mod:`~visiontrain.trainer.summary` the :class:`Run` handle and ``summary.json``,
:mod:`~visiontrain.trainer.search` ``tune`` (hyperparameter search on Optuna).
"""

from visiontrain.trainer.folders import as_config, make_run_dir, saved_config
from visiontrain.trainer.search import TuneResult, tune
from visiontrain.trainer.summary import Run
from visiontrain.trainer.training import find_lr, train

__all__ = ["Run", "TuneResult", "as_config", "find_lr", "make_run_dir", "saved_config", "train", "tune"]
