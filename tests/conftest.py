"""Shared pytest fixtures. Real sample data lives outside the repo, in ../shared/realdata."""

import os
from pathlib import Path

import pytest

# Tests run on CPU with deterministic, full-precision matmuls (parity tolerances assume it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
  """The shared real-sample folder; tests that need it skip cleanly where it is absent."""
  if not REALDATA.is_dir():
    pytest.skip(f"real sample data not found at {REALDATA}")
  return REALDATA


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA optimisations off while a module compiles many tiny models (restored afterwards)."""
  import jax  # pylint: disable=g-import-not-at-top
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


# Tiny trained runs shared by test_predict and test_visualize (session scope: trained once).
from tests.predict_fixtures import (  # noqa: E402,F401  pylint: disable=unused-import
    pose_aware_runs, short_runs, synthetic_dir, trained_run)
