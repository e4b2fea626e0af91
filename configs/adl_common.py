"""The PAAB/PAAT paper's recipe for its daily-living datasets (Smarthome, NTU-60, N-UCLA).

`configs/smarthome.py`, `configs/ntu60.py` and `configs/nucla.py` call `get_adl_config`; the
dataset facts (protocols, record folders, joints, frames, batch) are in `DATASETS` below.

Arguments (comma-separated after the file name, big_vision style, see configs/common.py):
  method     baseline (default) | paab | paat   (bare words)
             paab: one PA-SA block after the last backbone block (the paper's default);
             paat: the patch-keypoint head after block 1, P3D targets, loss weight 1.6.
  protocol=  smarthome cs|cv1|cv2, ntu60 cvs1|cvs2|cvs3|xsub|xview, nucla cs|cv1|cv2|cv3;
             default the first
  backbone   timesformer (the paper's: TimeSformer-B/16, full fine-tuning; the default where
             the TimeSformer family exists) | vit_b16 (frozen CLIP + AIM adapters) | vit_l14 |
             tiny
  runlocal   tiny backbone (Ti/8), 32 px, 2 steps on CPU
  public     the public code's run instead of the paper's (dominickrei/PoseAwareVT, see PUBLIC
             below and docs/models.md "PAAB/PAAT recipe"): 3x3-dilated pose maps, Nesterov SGD,
             weight decay on every tensor, PAAB stochastic depth as its pose blocks, PAAT
             lambda 1, PAAB after block 1, batch 64; frames 16 on N-UCLA. Arguments named
             explicitly (paat_weight=, pose_map_dilation=, paab_layers=) still win.
Ablations (Table 1, Table 2, Fig. 4, Fig. 9):
  paab_layers=12 | 1+12 | 6 ...   PAAB position(s), 1-indexed, '+'-separated (Table 1a); implies
                                  paab
  paab_depth=1..4                 consecutive PAABs at each position (Table 1c)
  paab_variant=pa_sa|fact_pa_sta|joint_pa_sta   (Table 1b)
  paat_layer=1|6|12               PAAT position (Table 1a); implies paat
  paat_target=p3d|p2d             (Table 1d)
  paat_weight=1.6                 lambda of Eq. 8 (Fig. 9 sweeps 0.3..5)
  pose_map_dilation=1             k x k dilation of P2D (the public code uses 3; `public`)
  pose_map_random                 Table 2: pose maps from random positions
  pose_map_noise=0                Fig. 4: + a random integer in [0, eps] px per coordinate

The recipe (Reilly et al., Appendix B, and the public configs of dominickrei/PoseAwareVT
`configs/PAA{B,T}_SH_CS.yaml`): SGD lr 0.005, momentum 0.9, weight decay 1e-4, 15 epochs, lr
x0.1 at epochs 11 and 14, no warmup; frames at a fixed rate (TimeSformer's dense sampling at 30
fps) from a person-centred crop, 224 px crops by TimeSformer's scale jitter (short side
256-320); test 10 clips x 1 crop, scores combined by max. Where the public configs differ from
the paper, the paper wins and the dataset's docstring says so; `public` takes the public run's.
Public files checked (commit 5030d19): configs/PAAB_SH_CS.yaml and PAAT_SH_CS.yaml (the only
configs; NTU / N-UCLA appear in their comments: "16 for NTU and NUCLA" frames, rate 4),
timesformer/config/defaults.py, timesformer/models/{vit,vit_poseblock,losses}.py,
timesformer/datasets/smarthome.py, tools/train_net.py, and the optimizer it imports
(facebookresearch/TimeSformer timesformer/models/optimizer.py; PoseAwareVT's own copy is not in
the reference index).
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
PAPER_PAAT_WEIGHT = 1.6
# What the `public` argument sets: the public Smarthome run of dominickrei/PoseAwareVT.
PUBLIC = dict(
    # defaults.py DUAL_BRANCH_TIMESFORMER.POSE_INFLATION = 1 (no yaml sets it), passed by
    # datasets/smarthome.py to keypoints_2_patch_idx(inflation=): one patch each side, 3x3.
    pose_map_dilation=3,
    # defaults.py SOLVER.NESTEROV = True (DAMPENING 0), torch.optim.SGD(nesterov=) in
    # construct_optimizer (TimeSformer timesformer/models/optimizer.py).
    nesterov=True,
    # construct_optimizer: every param whose name lacks "bn" gets SOLVER.WEIGHT_DECAY; the
    # model's no_weight_decay() (pos_embed, cls_token, time_embed) is never called.
    decay_rule="all",
    # models/vit_poseblock.py PoseBlockSpatial / PoseBlockSpatioTemporal (models/paab.py).
    paab_drop_path="public",
    # models/losses.py PoseAuxLoss.__call__(..., scale=1); tools/train_net.py passes no scale.
    paat_weight=1.0,
    # configs/PAAB_SH_CS.yaml EXPERIMENTAL.POSE_BLOCK_POS: [1] (the paper: after block 12).
    paab_layers=(1,),
    # PAA{B,T}_SH_CS.yaml TRAIN.BATCH_SIZE and TEST.BATCH_SIZE: 64 (the paper: 32 Smarthome).
    batch=64,
    # PAA{B,T}_SH_CS.yaml DATA.NUM_FRAMES: 8 "# 16 for NTU and NUCLA" (the paper: 8 N-UCLA).
    frames={"smarthome": 8, "ntu60": 16, "nucla": 16},
)


def _model_fields() -> set[str]:
  import dataclasses  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models import config as model_config_lib  # pylint: disable=g-import-not-at-top
  return {f.name for f in dataclasses.fields(model_config_lib.ModelConfig)}


def has_timesformer() -> bool:
  return "family" in _model_fields()


def parse_adl_arg(arg: str | None, dataset: str) -> ml_collections.ConfigDict:
  """The argument string of a daily-living config -> ConfigDict (see the module docstring)."""
  protocols = DATASETS[dataset]["protocols"]
  items = [s.strip() for s in (arg or "").split(",") if s.strip()]
  named = {item.partition("=")[0] for item in items}
  family = "timesformer" if has_timesformer() else "clip"
  rest = []
  for item in items:
    if item in ("timesformer", "backbone=timesformer"):
      family = "timesformer"
    elif item in common.BACKBONES or item.startswith("backbone="):
      family = "clip"
      rest.append(item)
    else:
      rest.append(item)
  out = common.parse_arg(
      ",".join(rest), backbone="vit_b16", baseline=False, paab=False, paat=False,
      protocol=next(iter(protocols)), runlocal=False, paab_layers="", paab_depth=1,
      paab_variant="pa_sa",
      paat_layer=0, paat_target="p3d", paat_weight=PAPER_PAAT_WEIGHT, pose_map_dilation=1,
      pose_map_random=False, pose_map_noise=0, public=False)
  out.family, out.dataset = family, dataset
  if family == "timesformer" and not has_timesformer():
    raise ValueError("config argument timesformer: this pgvt_jax has no TimeSformer family "
                     "(config.model.family); use a CLIP backbone (vit_b16)")
  if out.protocol not in protocols:
    raise ValueError(f"config argument protocol={out.protocol!r}; {dataset} has "
                     f"{sorted(protocols)}")
  if out.paab_layers:
    out.paab = True
  if out.paat_layer:
    out.paat = True
  chosen = [m for m in METHODS if out[m]]
  if len(chosen) > 1:
    raise ValueError(f"config arguments {chosen}: choose one of {METHODS} (the paper's "
                     "PAAB + PAAT combination: set --config.model.paab_layers and "
                     "--config.model.paat_layer)")
  out.method = chosen[0] if chosen else "baseline"
  try:
    out.paab_layer_list = tuple(int(x) for x in out.paab_layers.split("+") if x)
  except ValueError:
    raise ValueError(f"config argument paab_layers={out.paab_layers!r}: expected block numbers "
                     "joined by '+', e.g. 12 or 1+12") from None
  if out.public:  # the public run's values where no argument names the field
    if "paat_weight" not in named:
      out.paat_weight = PUBLIC["paat_weight"]
    if out.method != "baseline" and "pose_map_dilation" not in named:
      out.pose_map_dilation = PUBLIC["pose_map_dilation"]
    if out.method == "paab" and not out.paab_layer_list:
      out.paab_layer_list = PUBLIC["paab_layers"]
  return out


def _model(arg, spec, num_classes) -> dict:
  """config.model fields: backbone family and size, frames, joints, PAAB / PAAT."""
  frames = (4 if arg.runlocal else PUBLIC["frames"][arg.dataset] if arg.public
            else spec["frames"])
  model = dict(variant="video_only", num_classes=num_classes, video_frames=frames,
               pose_frames=frames, joints_per_person=spec["joints"], num_persons=1,
               image_size=32 if arg.runlocal else 224)
  if arg.family == "timesformer":
    # TimeSformer-B/16 (K400 8x32 weights via pgvt_jax.convert_timesformer), all trained.
    # Regularisation of TimeSformer's `vit_base_patch16_224` (facebookresearch/TimeSformer
    # vit.py): drop_path_rate 0.1, drop_rate 0 (its linear head has no dropout; the public
    # configs' DROPOUT_RATE 0.5 is read only by SlowFast heads).
    model.update(family="timesformer", backbone="Ti/8" if arg.runlocal else "B/16",
                 drop_path=0.1, dropout=0.0)
  else:
    model.update(backbone="Ti/8" if arg.runlocal else common.BACKBONES[arg.backbone])
    if "family" in _model_fields():
      model["family"] = "clip"
  if arg.runlocal:
    model["drop_path"] = 0.1
  if arg.public:
    model["paab_drop_path"] = PUBLIC["paab_drop_path"]
  depth = _depth(model)
  if arg.method == "paab":
    model["paab_layers"] = arg.paab_layer_list or (depth,)
    model["paab_variant"] = arg.paab_variant
    if arg.paab_depth != 1:
      model["paab_depth"] = arg.paab_depth
  elif arg.method == "paat":
    model["paat_layer"] = arg.paat_layer or 1
    model["paat_target"] = arg.paat_target
  if arg.method != "baseline":
    model.update(pose_map_dilation=arg.pose_map_dilation,
                 pose_map_random=arg.pose_map_random, pose_map_noise=arg.pose_map_noise)
  elif (arg.pose_map_random or arg.pose_map_noise or arg.pose_map_dilation != 1):
    raise ValueError("config arguments pose_map_*: the baseline uses no pose maps; add paab "
                     "or paat")
  missing = sorted(set(model) - _model_fields())
  if missing:
    raise ValueError(f"config.model has no field(s) {missing} in this pgvt_jax (PAAB/PAAT "
                     "not available)")
  return model


def _depth(model: dict) -> int:
  """Number of blocks of the backbone (PAAB's default position is after the last)."""
  if model.get("family") == "timesformer":
    from pgvt_jax.models import timesformer  # pylint: disable=g-import-not-at-top
    return timesformer.get_config(model["backbone"]).layers
  from pgvt_jax.models import clip_vit  # pylint: disable=g-import-not-at-top
  return clip_vit.get_config(model["backbone"]).layers


def get_adl_config(arg: str | None, dataset: str) -> ml_collections.ConfigDict:
  """The full experiment config of `dataset` ("smarthome" | "ntu60" | "nucla")."""
  from pgvt_jax.experiment import trainer_config  # pylint: disable=g-import-not-at-top
  from pgvt_jax.models import config as model_config_lib  # pylint: disable=g-import-not-at-top
  spec = DATASETS[dataset]
  arg = parse_adl_arg(arg, dataset)
  builder_config, num_classes, train_split, eval_split = spec["protocols"][arg.protocol]
  config = trainer_config()
  config.seed = 0

  # ---- config.model: "baseline" = the backbone alone (TimeSformer, or CLIP + AIM adapters on
  # the video); PAAB / PAAT see the pose of the video frames, so T_h = T_l.
  config.model = model_config_lib.model_config(**_model(arg, spec, num_classes))
  if arg.family == "timesformer":
    config.freeze_backbone = False    # full fine-tuning, as the paper
  if arg.method == "paat":
    config.aux_losses.paat = arg.paat_weight

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
  if arg.public:
    o.nesterov, o.decay_rule = PUBLIC["nesterov"], PUBLIC["decay_rule"]
    d.train_batch_size = d.eval_batch_size = PUBLIC["batch"]
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
