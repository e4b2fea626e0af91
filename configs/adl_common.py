"""The PAAB/PAAT paper's recipe for its daily-living datasets (Smarthome, NTU-60, N-UCLA).

`configs/smarthome.py`, `configs/ntu60.py` and `configs/nucla.py` call `get_adl_config`; the
dataset facts (protocols, record folders, joints, frames, batch) are in `DATASETS` below.

Arguments (comma-separated after the file name, big_vision style, see configs/common.py):
  method:    baseline (default) | paab | paat   (bare words)
  protocol=  the dataset's protocols (smarthome cs|cv1|cv2, ntu60 cvs1|cvs2|cvs3|xsub|xview,
             nucla cs|cv1|cv2|cv3); default the first
  backbone:  vit_b16 (default; frozen CLIP + AIM adapters) | vit_l14 | tiny
  runlocal   tiny backbone (Ti/8), 32 px, 2 steps on CPU

The recipe (Reilly et al., Appendix B, and the public configs of dominickrei/PoseAwareVT
`configs/PAA{B,T}_SH_CS.yaml`): SGD lr 0.005, momentum 0.9, weight decay 1e-4, 15 epochs, lr
x0.1 at epochs 11 and 14, no warmup; frames at a fixed rate; test 10 clips x 1 crop combined by
max. Where the public configs differ from the paper the paper wins and the dataset's docstring
says so.
"""

from __future__ import annotations

import ml_collections

from configs import common

# Record folders under common.DATA_ROOT, as `python -m data_prep.build` writes them
# (<builder name>/<builder config>/<version>), and the splits a protocol trains / tests on.
DATASETS = {
    "smarthome": dict(
        builder="toyota_smarthome", layout="smarthome13", joints=13,
        # protocol: (builder config, num_classes, train split, eval split)
        protocols={"cs": ("cs", 31, "train", "test"), "cv1": ("cv1", 19, "train", "test"),
                   "cv2": ("cv2", 19, "train", "test")},
        frames=8, rate=32, batch=32, best_metric="eval/mean_class_accuracy"),
    "ntu60": dict(
        builder="ntu60_2d", layout="ntu25", joints=25,
        # CVS1-3: one build (config "cvs"), train on the 0 degree view of the cross-subject
        # training subjects, test on the 0 / 45 / 90 degree views of the test subjects.
        protocols={"cvs1": ("cvs", 60, "train", "test_0"),
                   "cvs2": ("cvs", 60, "train", "test_45"),
                   "cvs3": ("cvs", 60, "train", "test_90"),
                   "xsub": ("xsub_kinect", 60, "train", "val"),
                   "xview": ("xview_kinect", 60, "train", "val")},
        frames=16, rate=4, batch=64, best_metric="eval/top1"),
    "nucla": dict(
        builder="nucla", layout="openpose18", joints=18,
        protocols={"cs": ("cs", 10, "train", "test"), "cv1": ("cv1", 10, "train", "test"),
                   "cv2": ("cv2", 10, "train", "test"), "cv3": ("cv3", 10, "train", "test")},
        frames=8, rate=4, batch=64, best_metric="eval/top1"),
}
METHODS = ("baseline", "paab", "paat")


def parse_adl_arg(arg: str | None, dataset: str) -> ml_collections.ConfigDict:
  """The argument string of a daily-living config -> ConfigDict (see the module docstring)."""
  protocols = DATASETS[dataset]["protocols"]
  out = common.parse_arg(arg, backbone="vit_b16", baseline=False, paab=False, paat=False,
                         protocol=next(iter(protocols)), runlocal=False)
  if out.protocol not in protocols:
    raise ValueError(f"config argument protocol={out.protocol!r}; {dataset} has "
                     f"{sorted(protocols)}")
  chosen = [m for m in METHODS if out[m]]
  if len(chosen) > 1:
    raise ValueError(f"config arguments {chosen}: choose one of {METHODS}")
  out.method = chosen[0] if chosen else "baseline"
  return out


def get_adl_config(arg: str | None, dataset: str) -> ml_collections.ConfigDict:
  """The full experiment config of `dataset` ("smarthome" | "ntu60" | "nucla")."""
  from pgvt_jax.experiment import trainer_config  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models import config as model_config_lib  # pylint: disable=g-import-not-at-top
  spec = DATASETS[dataset]
  arg = parse_adl_arg(arg, dataset)
  builder_config, num_classes, train_split, eval_split = spec["protocols"][arg.protocol]
  config = trainer_config()
  config.seed = 0

  # ---- config.model: the CLIP + AIM video model (AIM = the "baseline" on this backbone);
  # PAAB / PAAT see the pose of the video frames, so T_h = T_l.
  model = dict(variant="video_only", backbone=common.BACKBONES[arg.backbone], image_size=224,
               num_classes=num_classes, video_frames=spec["frames"],
               pose_frames=spec["frames"], joints_per_person=spec["joints"], num_persons=1)
  if arg.runlocal:
    model.update(backbone="Ti/8", image_size=32, video_frames=4, pose_frames=4,
                 drop_path=0.1)
  config.model = model_config_lib.model_config(**model)

  # ---- config.data
  d = config.data
  d.builder_dir = f"{common.DATA_ROOT}/{spec['builder']}/{builder_config}/1.0.0"
  d.train_split, d.eval_split = train_split, eval_split
  d.num_frames = config.model.get_ref("video_frames")
  d.pose_frames = config.model.get_ref("pose_frames")
  d.image_size = config.model.get_ref("image_size")
  d.max_persons = config.model.get_ref("num_persons")
  d.num_joints = (config.model.get_ref("joints_per_person")
                  * config.model.get_ref("num_persons"))
  # Frames: T at a fixed rate (TimeSformer's dense sampling at 30 fps).
  d.sampling, d.sampling_rate, d.target_fps = "fixed_rate", spec["rate"], 30.0
  # Crops come from the person-centred square (union box of the video's keypoints). Train:
  # TimeSformer's scale jitter (short side 256..320, random 224 crop) = square crops of
  # (224/320)^2 .. (224/256)^2 of the square's area; test: short side 256, centre 224.
  d.person_crop, d.person_crop_margin = True, 0.1
  d.crop_area, d.crop_aspect = ((224 / 320) ** 2, (224 / 256) ** 2), (1.0, 1.0)
  d.short_side = 256
  d.eval_clips, d.eval_crops = 10, 1     # 10 clips x 1 crop
  d.train_batch_size = d.eval_batch_size = spec["batch"]
  d.num_workers = 8
  config.eval_combine = "max"            # TimeSformer's ENSEMBLE_METHOD: 'max'

  # ---- config.optim: SGD, steps at epochs 11 and 14 (x0.1 each), 15 epochs, no warmup.
  o = config.optim
  o.optimizer, o.lr, o.momentum, o.weight_decay = "sgd", 0.005, 0.9, 1e-4
  o.schedule, o.lr_step_epochs, o.lr_step_factor = "steps", (11, 14), 0.1
  o.warmup_epochs = 0.0
  config.num_epochs = 15
  config.eval_every = 0
  config.checkpoint_every = 1000
  config.best_metric = spec["best_metric"]

  if arg.runlocal:  # one short run on CPU
    d.short_side = 0
    d.eval_clips = 2
    d.train_batch_size = d.eval_batch_size = 4
    d.num_workers = 0
    config.total_steps = 2
    config.log_every = 1
  return config
