"""Experiment configs (big_vision style): `--config=configs/<name>.py:<arg>`, run from the repo root."""
