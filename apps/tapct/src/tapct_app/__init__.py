"""tapct_app: the ``tapct`` command line wiring tapct_vit3d, tapct_ssl, tapct_data, tapct_eval.

The package is an application; its importable pieces (the pretraining engine in
:mod:`tapct_app.train`, the jobs behind each command) are documented for reuse from
Python, e.g. ``tapct_app.train.loop.run_pretraining(config, output)``.
"""

__all__: list[str] = []
