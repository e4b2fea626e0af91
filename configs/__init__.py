"""Experiment configs (big_vision style): `--config=configs/<name>.py:<arg>`.

Installed with pgvt_jax, so `configs/<name>.py` loads from any working directory
(pgvt_jax/config_files.py resolves it against this package when the path does not exist).
"""
