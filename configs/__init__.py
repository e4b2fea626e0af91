"""Experiment configs (big_vision style): `--config=configs/<name>.py:<arg>`.

Run from the repository root (the configs import `configs.common`).
"""
