"""pgvt_jax.malloc_tuning: the launcher's one-time re-exec with glibc malloc tunables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from pgvt_jax import malloc_tuning

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc tunables only exist on Linux/glibc")

# Each start appends a line; then re-exec; then measures the page faults of touching a
# 64 MiB malloc'd block a second time after freeing it (0 when freed memory stays mapped).
_SCRIPT = textwrap.dedent("""
    import ctypes, os, resource, sys
    from pgvt_jax import malloc_tuning
    with open(sys.argv[1], "a") as f:
      f.write(f"start {os.environ.get('GLIBC_TUNABLES', '-')}\\n")
    malloc_tuning.reexec_with_tunables()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    n = 64 << 20
    def touch():
      p = libc.malloc(n)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      ctypes.memset(p, 1, n)
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
      libc.free(ctypes.c_void_p(p))
      return faults
    touch()
    with open(sys.argv[1], "a") as f:
      f.write(f"faults {touch()}\\n")
""")


def _env(**env_changes) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k != malloc_tuning.MARKER and k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
  env["JAX_PLATFORMS"] = "cpu"  # CPU-only by declaration, whatever this host has
  env.update(env_changes)
  return env


def _run(tmp_path, *launch, **env_changes) -> list[str]:
  """Runs _SCRIPT as `python -m tuning_probe LOG` (or `python *launch LOG`); its log lines."""
  (tmp_path / "tuning_probe.py").write_text(_SCRIPT)
  env = _env(**env_changes)
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd(), env.get("PYTHONPATH", "")])
  log = tmp_path / "log.txt"
  launch = launch or ("-m", "tuning_probe")
  subprocess.run([sys.executable, *launch, str(log)], env=env, check=True, timeout=60)
  return log.read_text().splitlines()


def test_reexecs_once_with_tunables_and_freed_memory_stays_mapped(tmp_path):
  lines = _run(tmp_path)
  assert lines[:2] == ["start -", f"start {malloc_tuning.TUNABLES}"], lines  # exactly one re-exec
  assert len(lines) == 3 and lines[2].startswith("faults "), lines
  assert int(lines[2].split()[1]) < 100  # reused: 64 MiB would be 16384 4-KiB pages


def test_without_tunables_large_blocks_fault_again(tmp_path):
  # What the tunables fix: glibc mmaps the block and unmaps it on free.
  lines = _run(tmp_path, **{malloc_tuning.MARKER: "0"})
  assert lines[0] == "start -" and len(lines) == 2, lines
  assert int(lines[1].split()[1]) > 10000


def test_user_settings_win(tmp_path):
  for i, env in enumerate(({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                           {"MALLOC_ARENA_MAX": "2"})):
    (tmp_path / str(i)).mkdir()
    lines = _run(tmp_path / str(i), **env)
    assert len(lines) == 2 and lines[1].startswith("faults"), (env, lines)  # no re-exec


def test_a_kernel_or_runpy_launch_is_not_reexecuted(tmp_path):
  """`%run -m` / runpy in a Jupyter kernel: the command line is the kernel's, never re-run."""
  runpy_launch = ("-c", "import runpy, sys; sys.argv = sys.argv[:1] + sys.argv[1:]; "
                  "runpy.run_module('tuning_probe', run_name='__main__', alter_sys=True)")
  lines = _run(tmp_path, *runpy_launch)
  assert len(lines) == 2 and lines[0] == "start -", lines  # ran once, untuned
  assert int(lines[1].split()[1]) > 10000


def test_a_launch_that_may_use_an_accelerator_is_not_reexecuted(tmp_path):
  lines = _run(tmp_path, JAX_PLATFORMS="cuda")  # the probe itself never starts JAX
  assert len(lines) == 2 and lines[0] == "start -", lines


def _why(environ=None, **probes):
  """why_not_reexec for a `python -m pgvt_jax.main` launch on a bare CPU host, but `probes`."""
  args = dict(orig_argv=["python", "-m", "pgvt_jax.main", "--workdir=w"],
              main_module="pgvt_jax.main", loaded=["sys", "os"], devices=[], plugins=[])
  args.update(probes)
  return malloc_tuning.why_not_reexec({"PATH": "/bin"} if environ is None else environ, **args)


def test_should_reexec_guard():
  assert _why() is None
  assert malloc_tuning.should_reexec({"PATH": "/bin"}, orig_argv=["python", "-m", "m"],
                                     main_module="m", loaded=[], devices=[], plugins=[])
  assert "is set" in _why({malloc_tuning.MARKER: "1"})
  assert "by the user" in _why({"GLIBC_TUNABLES": "x"})
  assert "by the user" in _why({"MALLOC_ARENA_MAX": "2"})


@pytest.mark.parametrize("orig_argv, main_module, loaded, why", [
    # Jupyter/Colab: `%run -m pgvt_jax.main` or runpy inside the kernel.
    (["python", "-m", "ipykernel_launcher", "-f", "k.json"], "pgvt_jax.main", ["ipykernel"],
     "inside a kernel (ipykernel"),
    (["python", "-m", "ipykernel_launcher", "-f", "k.json"], "pgvt_jax.main", [],
     "started with `-m ipykernel_launcher`"),
    (["python", "-m", "colab_kernel_launcher"], None, ["google.colab"], "inside a kernel"),
    (["python", "-c", "import runpy"], "pgvt_jax.main", [], "no `-m` module"),
    (["python", "train.py"], None, [], "no `-m` module"),
    (["python", "-m", "pgvt_jax.main"], "other.module", [], "python -m other.module"),
])
def test_only_a_python_m_launch_is_reexecuted(orig_argv, main_module, loaded, why):
  reason = _why(orig_argv=orig_argv, main_module=main_module, loaded=loaded)
  assert reason is not None and why in reason, reason


@pytest.mark.parametrize("orig_argv, main_module", [
    (["python", "-m", "pgvt_jax.main", "--config=c"], "pgvt_jax.main"),
    (["python3", "-X", "dev", "-W", "error", "-m", "benchmarks.train_step"],
     "benchmarks.train_step"),
    (["python", "-Im", "pgvt_jax.main"], "pgvt_jax.main"),
    (["python", "-mpkg"], "pkg.__main__"),  # `python -m pkg` runs pkg/__main__.py
])
def test_python_m_launches_are_recognised(orig_argv, main_module):
  assert _why(orig_argv=orig_argv, main_module=main_module) is None


@pytest.mark.parametrize("environ, devices, plugins, why", [
    ({"JAX_PLATFORMS": "cuda"}, [], [], "JAX_PLATFORMS=cuda"),
    ({"JAX_PLATFORMS": "tpu,cpu"}, [], [], "JAX_PLATFORMS=tpu,cpu"),
    ({}, ["/dev/nvidia0"], [], "device /dev/nvidia0"),
    ({}, ["/dev/accel0"], ["libtpu"], "device /dev/accel0"),
    ({}, [], ["jax_plugins.xla_cuda12"], "plugin jax_plugins.xla_cuda12"),
    ({"JAX_PLATFORMS": ""}, [], ["libtpu"], "plugin libtpu"),
])
def test_gpu_and_tpu_hosts_are_not_reexecuted(environ, devices, plugins, why):
  reason = _why(environ, devices=devices, plugins=plugins)
  assert reason is not None and why in reason, reason


def test_jax_platforms_cpu_means_cpu_only_whatever_is_installed():
  assert _why({"JAX_PLATFORMS": "cpu"}, devices=["/dev/nvidia0"], plugins=["libtpu"]) is None
  assert _why({"JAX_PLATFORMS": " CPU "}, devices=["/dev/accel0"]) is None


def test_accelerator_device_probe(tmp_path):
  assert malloc_tuning.accelerator_devices(str(tmp_path)) == []
  (tmp_path / "vfio").mkdir()
  (tmp_path / "vfio" / "vfio").touch()  # the VFIO container alone: not a device
  (tmp_path / "null").touch()
  assert malloc_tuning.accelerator_devices(str(tmp_path)) == []
  for name in ("nvidia0", "nvidiactl", "accel0", "kfd", "vfio/0"):
    (tmp_path / name).touch()
  found = [os.path.relpath(p, tmp_path) for p in malloc_tuning.accelerator_devices(str(tmp_path))]
  assert sorted(found) == ["accel0", "kfd", "nvidia0", "nvidiactl", "vfio/0"]


def test_accelerator_plugin_probe(tmp_path):
  """libtpu, a jax_plugins module or a jax_plugins entry point, found without importing."""
  assert malloc_tuning.accelerator_plugins([str(tmp_path)]) == []
  tpu, cuda, metal = (tmp_path / n for n in ("tpu", "cuda", "metal"))
  (tpu / "libtpu").mkdir(parents=True)
  (tpu / "libtpu" / "__init__.py").write_text("raise SystemExit('imported')")
  (cuda / "jax_plugins" / "xla_cuda12").mkdir(parents=True)
  (cuda / "jax_plugins" / "xla_cuda12" / "__init__.py").write_text("raise SystemExit('imported')")
  dist = metal / "jax_metal-0.1.dist-info"
  dist.mkdir(parents=True)
  (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jax-metal\nVersion: 0.1\n")
  (dist / "entry_points.txt").write_text("[jax_plugins]\nmetal = metal_plugin\n")
  assert malloc_tuning.accelerator_plugins([str(tpu)]) == ["libtpu"]
  assert malloc_tuning.accelerator_plugins([str(cuda)]) == ["jax_plugins.xla_cuda12"]
  assert malloc_tuning.accelerator_plugins([str(metal)]) == ["metal_plugin (entry point)"]


def test_deciding_does_not_start_jax(tmp_path):
  """The probes run before XLA_FLAGS are set: they must not import JAX or start a backend."""
  script = ("import sys; from pgvt_jax import malloc_tuning as m; m.why_not_reexec({}, "
            "orig_argv=['python', '-m', 'x'], main_module='x', loaded=[]); "
            "m.accelerator_plugins(); m.accelerator_devices(); print('jax' in sys.modules)")
  env = _env()
  env["PYTHONPATH"] = os.getcwd()
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True, timeout=60).stdout
  assert out.strip() == "False", out
