"""Preemption agreement across hosts: one process acts on its own SIGTERM flag at once; several
processes compare flags only at log/checkpoint steps, never with a collective on the others."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from pgvt_jax import train


def _cfg(log_every: int, checkpoint_every: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(log_every=log_every, checkpoint_every=checkpoint_every))


def _run_loop(monkeypatch, processes: int, sigterm_at: int, total: int = 12, *,
              log_every: int = 5, checkpoint_every: int = 8):
  """Replays the loop's calls with a fake process count; returns (allgather steps, stop step)."""
  gathered: list[int] = []
  current = [0]

  def fake_allgather(x):
    gathered.append(current[0])
    # This host's flag, and another host that was never signalled.
    return np.stack([np.asarray(x), np.asarray(False)])

  monkeypatch.setattr(jax, "process_count", lambda: processes)
  monkeypatch.setattr(train.multihost_utils, "process_allgather", fake_allgather)
  cfg = _cfg(log_every, checkpoint_every)
  for step in range(1, total + 1):
    current[0] = step
    if train._any_host(step >= sigterm_at, step, cfg, step == total):  # pylint: disable=protected-access
      return gathered, step
  return gathered, None


def test_several_hosts_gather_only_at_log_and_checkpoint_steps(monkeypatch):
  gathered, stopped = _run_loop(monkeypatch, processes=2, sigterm_at=99)
  assert gathered == [5, 8, 10, 12]   # log_every 5, checkpoint_every 8, the last step 12
  assert stopped is None


@pytest.mark.parametrize("sigterm_at,stop", [(1, 5), (5, 5), (6, 8), (9, 10), (11, 12)])
def test_several_hosts_see_the_signal_at_the_next_sync_point(monkeypatch, sigterm_at, stop):
  gathered, stopped = _run_loop(monkeypatch, processes=2, sigterm_at=sigterm_at)
  assert stopped == stop
  assert gathered[-1] == stop and all(s in (5, 8, 10, 12) for s in gathered)


def test_one_host_acts_on_the_next_step_without_any_collective(monkeypatch):
  gathered, stopped = _run_loop(monkeypatch, processes=1, sigterm_at=3)
  assert stopped == 3
  assert gathered == []


def test_sync_points_depend_on_the_step_only():
  cfg = _cfg(log_every=4, checkpoint_every=6)
  points = [s for s in range(1, 14) if train.is_preemption_sync_point(s, cfg, s == 13)]
  assert points == [4, 6, 8, 12, 13]
