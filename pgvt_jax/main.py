r"""Entry point: parses flags and calls the trainer. Kept short so notebooks can import the rest.

    python -m pgvt_jax.main --config=configs/demo.py --workdir=/tmp/demo
    python -m pgvt_jax.main --config=configs/diving48.py:vit_l14 --workdir=... \
        --config.clip_dir=weights/clip_l14 --config.optim.lr=3e-4
    python -m pgvt_jax.main --config=... --workdir=... --mode=evaluate

Rerunning the same command resumes from the workdir's latest checkpoint. Exit codes: 0 done;
1 a clear error (bad config, workdir in use, changed config on resume, divergence, nothing to
evaluate); 143 preempted by SIGTERM after saving a checkpoint (rerun to resume). Multi-host: pass
--multiprocess (on TPU pods and SLURM/GPU clusters jax.distributed finds its peers itself) or
--coordinator_address/--num_processes/--process_id explicitly.

Launched as `python -m pgvt_jax.main` on a CPU-only Linux/glibc host, the process re-execs
itself once with malloc tunables that keep XLA:CPU's per-step scratch memory mapped between
steps (pgvt_jax/malloc_tuning.py says when exactly; PGVT_JAX_MALLOC_TUNING=0 opts out). It adds
XLA:CPU's memory-minimising scheduler to XLA_FLAGS (pgvt_jax/xla_flags.py; a flag already in
XLA_FLAGS wins).
"""

import logging as logging_std
import sys

from pgvt_jax import malloc_tuning, xla_flags

if __name__ == "__main__":  # before JAX starts: keep XLA:CPU's per-step scratch mapped...
  malloc_tuning.reexec_with_tunables()
  xla_flags.set_cpu_flags()  # ...and small (a memory-minimising XLA:CPU schedule)

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from pgvt_jax import checkpointing, cli, config_files, data, fitting, train
from pgvt_jax import workdir as workdir_lib

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line, defined at launch only: importing this module defines no flags
  (pgvt_jax/cli.py says why)."""
  # `configs/<name>.py` resolves from any working directory (pgvt_jax.config_files).
  config_files.DEFINE_config_file("config", None, "Experiment config file.", lock_config=False)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
  flags.DEFINE_enum("mode", "train_and_evaluate", ["train_and_evaluate", "train", "evaluate"],
                    "train_and_evaluate (evaluates every eval_every steps and at the end), "
                    "train (no evals) or evaluate (the best checkpoint).")
  flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize().")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Total number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
  """Orbax logs every file it renames at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.multiprocess or FLAGS.coordinator_address:
    # Only when asked: initialize() on a single host without a cluster would wait for peers.
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("JAX process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  config = FLAGS.config
  expected = (workdir_lib.ConfigError, workdir_lib.WorkdirLockedError, FloatingPointError,
              checkpointing.CheckpointIntegrityError, checkpointing.CheckpointRestoreError,
              fitting.DoesNotFit)
  try:
    if FLAGS.mode == "evaluate":
      metrics = train.evaluate(config, FLAGS.workdir)
    else:
      metrics = train.train_and_evaluate(config, FLAGS.workdir,
                                         run_evals=FLAGS.mode == "train_and_evaluate")
  except data.RecordsNotFoundError as e:  # a step the user has to take: names the build command
    raise SystemExit(f"pgvt_jax: error: {e}") from None
  except expected as e:  # the message says what to do; a traceback would only bury it
    logging.error("%s: %s", type(e).__name__, e)
    raise SystemExit(f"pgvt_jax: error: {e}") from None
  except FileNotFoundError as e:
    if FLAGS.mode != "evaluate":
      raise
    raise SystemExit(f"pgvt_jax: error: {e}") from None
  if "preempted_at_step" in metrics:
    logging.warning("Preempted: exiting with code %d (rerun the same command to resume)",
                    train.PREEMPTED_EXIT_CODE)
    sys.exit(train.PREEMPTED_EXIT_CODE)
  logging.info("Final metrics: %s", metrics)
  if jax.process_index() == 0:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})


if __name__ == "__main__":
  cli.run_app(main, _define_flags, __doc__)
