"""The pretraining engine, one job per module.

``config`` (the run config), ``build`` (backbone, objective, optimizer, schedules,
augmenter, data and loader from the config), ``step`` (one optimizer step, no I/O, no
host sync: what the benchmark times), ``monitor`` (the one transfer of values every
``log_every`` steps and the NaN/inf stop), ``state`` (the run state to and from a
checkpoint, the export), ``loop`` (``run_pretraining``: the steps with hooks for
progress, metrics and checkpoints), ``data``, ``checkpoint``, ``distributed``,
``metrics``, ``host_syncs`` (counting host reads in tests and benchmarks).
"""

from tapct_app.train.config import PretrainConfig

__all__ = ["PretrainConfig"]
