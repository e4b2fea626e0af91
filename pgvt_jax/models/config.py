"""`config.model`: the fields every model variant reads, their defaults and their validation.

Experiment configs (configs/*.py) build `config.model` with `model_config(**overrides)`; the
model is built from the validated, immutable `ModelConfig.from_config(config.model)`. Every error
names the field as it appears on the command line (`config.model.pose_frames`).

Families (`family`, models/factory.py): "clip" (default) is the frozen CLIP tower with AIM
adapters and the PGVT variants below; "timesformer" is the PAAB/PAAT paper's backbone (divided
space-time TimeSformer, `models/timesformer.py`) and "deit" its image backbone run per frame
(`models/deit_model.py`, the alignment task's with num_classes=0), both trained end to end,
video only (variant "video_only"). `backbone` names an entry of the family's PRESETS (BACKBONES
below: "B/16", "L/14", "Ti/8", ...). PAAB / PAAT fields mean the same on every family
(models/pose_aware.py).

Variants (PGVT Table 4; each is a switch on the same code, see `STREAMS`):

  video_only             AIM on T_l video frames                        (Table 4 row 2)
  pose_only              AIM on T_h frames of pose tokens               (row 1, Table 6)
  late_fusion            pose_only + video_only, features concatenated  (row 3)
  pgvt_no_temporal       PGVT without the Pose Temporal Attention T     (row 4)
  pgvt_two_adapters      R-Adapter replaced by the two S-Adapters only  (row 5)
  pgvt_no_refined_pose   R-Adapter refines the video stream only        (row 6i)
  pgvt_no_refined_video  R-Adapter refines the pose stream only         (row 6ii)
  pgvt                   the full model, Eq. 1-5                        (row 7)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import ml_collections

from pgvt_jax import accelerators
from pgvt_jax.models import arch as arch_lib
from pgvt_jax.models import clip_vit, deit, layers, timesformer
from pgvt_jax.models.paab import DROP_PATH_MODES as PAAB_DROP_PATH_MODES
from pgvt_jax.models.paab import VARIANTS as PAAB_VARIANTS


@dataclasses.dataclass(frozen=True)
class Streams:
  """What a variant computes.

  pose / video:       the stream exists (its embedding, adapters, ln_post, head input).
  pose_temporal:      Eq. 1 (frozen attention over the T_h pose frames + T-Adapter).
  video_temporal:     AIM's temporal adaptation of the video tokens (AIM baseline only).
  refine_pose:        Eq. 3 top row: pose queries attend to video keys/values.
  refine_video:       Eq. 3 bottom row: video queries attend to pose keys/values.
  """
  pose: bool
  video: bool
  pose_temporal: bool
  video_temporal: bool
  refine_pose: bool = False
  refine_video: bool = False

  @property
  def refine(self) -> bool:
    return self.refine_pose or self.refine_video


_BOTH = dict(pose=True, video=True, video_temporal=False)
STREAMS: dict[str, Streams] = {
    "video_only": Streams(pose=False, video=True, pose_temporal=False, video_temporal=True),
    "pose_only": Streams(pose=True, video=False, pose_temporal=True, video_temporal=False),
    "late_fusion": Streams(pose=True, video=True, pose_temporal=True, video_temporal=True),
    "pgvt_no_temporal": Streams(**_BOTH, pose_temporal=False, refine_pose=True,
                                refine_video=True),
    "pgvt_two_adapters": Streams(**_BOTH, pose_temporal=True),
    "pgvt_no_refined_pose": Streams(**_BOTH, pose_temporal=True, refine_video=True),
    "pgvt_no_refined_video": Streams(**_BOTH, pose_temporal=True, refine_pose=True),
    "pgvt": Streams(**_BOTH, pose_temporal=True, refine_pose=True, refine_video=True),
}
VARIANTS = tuple(STREAMS)
POSE_FORMATS = ("coords", "heatmap", "heatmap_rgb")
# family -> its backbone architecture: presets (config.model.backbone), pixel statistics.
BACKBONES = {
    "clip": (clip_vit.PRESETS, (clip_vit.CLIP_MEAN, clip_vit.CLIP_STD)),
    "timesformer": (timesformer.PRESETS, (timesformer.MEAN, timesformer.STD)),
    "deit": (deit.PRESETS, (deit.IMAGENET_MEAN, deit.IMAGENET_STD)),
}
FAMILIES = tuple(BACKBONES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_CHOICES = ("auto",) + tuple(DTYPES)


def auto_dtype(devices=None) -> str:
  """The compute dtype of `dtype="auto"` on `devices` (default `jax.devices()`): bfloat16 on
  TPU and NVIDIA GPUs from compute capability 8.0, float32 on CPU and older GPUs (T4, V100);
  see pgvt_jax/accelerators.py for why."""
  return accelerators.choose(devices).dtype


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Validated model hyper-parameters (hashable, so it can be a Flax module field)."""
  family: str = "clip"              # "clip" | "timesformer" | "deit" (module docstring)
  variant: str = "pgvt"
  backbone: str = "B/16"            # family preset: clip_vit "B/16", "L/14", ... or timesformer
                                    # "B/16"; "Ti/8" (tests) in both
  image_size: Optional[int] = None  # S; None: the preset's (224). Pos. embedding resized on load.
  activation: Optional[str] = None  # backbone MLP activation; None: the preset's ("quick_gelu",
                                    # OpenAI weights); "gelu" for open_clip non-quickgelu towers
  pose_frames: int = 48             # T_h
  video_frames: int = 16            # T_l
  num_classes: int = 48
  joints_per_person: int = 17       # j (COCO-17)
  num_persons: int = 1              # n; the model sees J = j * n joints per frame
  pose_format: str = "coords"       # "coords" (B,T_h,J,2) | "heatmap" (B,T_h,Hh,Hh,J) (Table 6)
                                    # | "heatmap_rgb" (the same, drawn in RGB, frozen conv1)
  heatmap_size: int = 112           # Hh
  heatmap_patch_size: Optional[int] = None  # None: the backbone's patch size
  pose_embed_hidden: Optional[int] = None   # hidden size of the coordinate MLP; None: width
  adapter_ratio: float = 0.25       # AIM bottleneck d -> d * ratio -> d
  adapter_scale: float = 0.5        # s_P = s_Z of Eq. 5 (AIM's MLP-Adapter scale)
  refine_heads: Optional[int] = None  # heads of the R-Adapter; None: the backbone's (d_k = 64)
  drop_path: float = 0.2            # stochastic depth, linear 0 -> drop_path over blocks
  drop_path_mode: str = "frame"     # "frame": per clip and frame; "aim": per token position
                                    # across the batch, as AIM's code (see layers.DROP_PATH_MODES)
  dropout: float = 0.5              # before the linear head
  dtype: str = "auto"               # compute dtype; params stay float32. "auto": bfloat16 on
                                    # TPU and GPUs >= sm80, else float32 (auto_dtype)
  remat: str = "auto"               # per block: "none" | "full" | "save_dots"
                                    # (layers.remat_block); True/False read as full/none;
                                    # "auto": the trainer picks what fits (pgvt_jax/fitting.py)
  attention_impl: str = "auto"      # "auto" (cuDNN flash on GPU >= sm80 when possible, else XLA) |
                                    # "xla" (probabilities recomputed in the backward) |
                                    # "xla_saved" (saved: more memory) | "cudnn"
                                    # (layers.resolve_attention_impl, models/attention.py)
  # PAAB / PAAT (Reilly et al., see docs/models.md "PAAB and PAAT"), on the video stream.
  paab_layers: tuple[int, ...] = ()  # a PAAB after each of these blocks (1-indexed); () = none
  paab_variant: str = "pa_sa"       # "pa_sa" | "fact_pa_sta" | "joint_pa_sta" (Table 1b)
  paab_depth: int = 1               # consecutive PAABs at each of paab_layers (Table 1c)
  paab_drop_path: str = "sample"    # PAAB stochastic depth: "sample" (per clip) | "public"
                                    # (PoseAwareVT's per frame / before temporal_fc; paab.py)
  pose_map_dilation: int = 1        # k x k dilation of P^2D (1 = the paper; public code: 3)
  paat_layer: int = 0               # PAAT head on the patch tokens after block l; 0 = off
  paat_target: str = "p3d"          # "p3d" (which joint) | "p2d" (any joint) (Table 1d)
  paat_hidden: int = 256            # D_e of Eq. 7
  pose_map_random: bool = False     # Table 2: pose maps from keypoints at random pixels
  pose_map_noise: int = 0           # Fig. 4: + random integer in [0, eps] px per coordinate
  # uint8 frames are normalised in the model, (x / 255 - mean) / std (RGB, models/pixels.py).
  # () = the family's statistics (pixel_stats); factory.configure_data copies
  # config.data.pixel_mean/std here, so set those.
  pixel_mean: tuple[float, ...] = ()
  pixel_std: tuple[float, ...] = ()

  def __post_init__(self):
    def fail(field, msg):
      raise ValueError(f"config.model.{field}={getattr(self, field)!r}: {msg}")

    if self.family not in FAMILIES:
      fail("family", f"expected one of {list(FAMILIES)}")
    if self.variant not in STREAMS:
      fail("variant", f"expected one of {list(VARIANTS)}")
    presets = BACKBONES[self.family][0]
    if self.backbone not in presets:
      fail("backbone", f"expected one of {sorted(presets)} for family {self.family!r}")
    for f in ("pose_frames", "video_frames", "num_classes", "joints_per_person", "num_persons",
              "heatmap_size"):
      if f == "num_classes" and self.family == "deit" and self.num_classes == 0:
        continue  # no head: an embedding model (the alignment task)
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        fail(f, "must be a positive integer")
    for f in ("image_size", "heatmap_patch_size", "pose_embed_hidden", "refine_heads"):
      v = getattr(self, f)
      if v is not None and (not isinstance(v, int) or v <= 0):
        fail(f, "must be a positive integer or None")
    if self.activation is not None and self.activation not in clip_vit.ACTIVATIONS:
      fail("activation", f"expected None or one of {sorted(clip_vit.ACTIVATIONS)}")
    if self.pose_format not in POSE_FORMATS:
      fail("pose_format", f"expected one of {list(POSE_FORMATS)}")
    if self.dtype not in DTYPE_CHOICES:
      fail("dtype", f"expected one of {list(DTYPE_CHOICES)}")
    if isinstance(self.remat, bool):  # configs written before remat policies existed
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in layers.REMAT_POLICIES + ("auto",):
      fail("remat", f"expected one of {list(layers.REMAT_POLICIES) + ['auto']}")
    if self.attention_impl not in layers.ATTENTION_IMPLS:
      fail("attention_impl", f"expected one of {list(layers.ATTENTION_IMPLS)}")
    for f in ("pixel_mean", "pixel_std"):  # ConfigDicts / JSON give lists: back to tuples
      v = tuple(float(x) for x in (getattr(self, f) or ()))
      object.__setattr__(self, f, v)
      if v and (len(v) != 3 or (f == "pixel_std" and min(v) <= 0)):
        fail(f, "expected () or 3 RGB values (std > 0)")
    if not 0 < self.adapter_ratio <= 4:
      fail("adapter_ratio", "expected 0 < ratio <= 4")
    if not 0 <= self.drop_path < 1:
      fail("drop_path", "expected 0 <= drop_path < 1")
    if self.drop_path_mode not in layers.DROP_PATH_MODES:
      fail("drop_path_mode", f"expected one of {list(layers.DROP_PATH_MODES)}")
    if not 0 <= self.dropout < 1:
      fail("dropout", "expected 0 <= dropout < 1")
    if self.family != "clip":
      self._check_video_backbone(fail)
      return
    s = self.streams
    if s.refine and self.pose_frames % self.video_frames:
      # FC_down / FC_up pair pose frames k*t .. k*t+k-1 with video frame t (the data pipeline
      # samples k = T_h / T_l pose frames per video segment).
      fail("pose_frames", f"T_h must be a multiple of config.model.video_frames "
           f"(T_l={self.video_frames}) for variant {self.variant!r} (R-Adapter)")
    try:
      clip = self.clip
    except ValueError as e:  # image_size not a multiple of the patch size
      raise ValueError(f"config.model.image_size={self.image_size!r}: {e}") from None
    self._check_pose_aware(fail, clip.layers)
    if self.refine_heads is not None and clip.width % self.refine_heads:
      fail("refine_heads", f"must divide the backbone width {clip.width}")
    if s.pose and self.pose_format == "heatmap" and self.heatmap_size % self.heatmap_patch:
      fail("heatmap_size", f"must be a multiple of the heatmap patch size {self.heatmap_patch}")
    if (s.pose and self.pose_format == "heatmap_rgb"
        and self.heatmap_patch != clip.patch_size):
      fail("heatmap_patch_size", f"pose_format='heatmap_rgb' patchifies with CLIP's conv1: "
           f"must be None or the backbone's patch size {clip.patch_size}")

  def _check_video_backbone(self, fail) -> None:
    """Families "timesformer" and "deit": video only, fully trained, exact GELU."""
    if self.variant != "video_only":
      fail("variant", f"family {self.family!r} is a video-only model: set "
           "config.model.variant='video_only' (PAAB/PAAT are switched on by their own fields)")
    if self.activation not in (None, "gelu"):
      fail("activation", f"family {self.family!r} uses exact GELU (leave it None)")
    if self.family == "deit" and self.drop_path_mode != "frame":
      fail("drop_path_mode", "family 'deit' drops paths per frame (timm DropPath on each "
           "frame's tokens): expected 'frame'")
    try:
      layers = self.arch.layers
    except ValueError as e:  # image_size not a multiple of the patch size
      raise ValueError(f"config.model.image_size={self.image_size!r}: {e}") from None
    self._check_pose_aware(fail, layers)

  def _check_pose_aware(self, fail, layers: int) -> None:
    """PAAB/PAAT fields (ConfigDicts turn tuples into lists: normalise back to tuples)."""
    layers_in = self.paab_layers
    if isinstance(layers_in, int):
      layers_in = (layers_in,)
    if not isinstance(layers_in, (tuple, list)) or not all(
        isinstance(l, int) and 1 <= l <= layers for l in layers_in):
      fail("paab_layers", f"expected a tuple of block numbers in 1..{layers} (1-indexed)")
    if len(set(layers_in)) != len(layers_in):
      fail("paab_layers", "a block number appears twice")
    object.__setattr__(self, "paab_layers", tuple(sorted(layers_in)))
    if not isinstance(self.paab_depth, int) or self.paab_depth < 1:
      fail("paab_depth", "must be a positive integer")
    if self.paab_variant not in PAAB_VARIANTS:
      fail("paab_variant", f"expected one of {list(PAAB_VARIANTS)}")
    if self.paab_drop_path not in PAAB_DROP_PATH_MODES:
      fail("paab_drop_path", f"expected one of {list(PAAB_DROP_PATH_MODES)}")
    if not isinstance(self.paat_layer, int) or not 0 <= self.paat_layer <= layers:
      fail("paat_layer", f"expected 0 (off) or a block number in 1..{layers}")
    if self.paat_target not in ("p3d", "p2d"):
      fail("paat_target", "expected 'p3d' or 'p2d'")
    if not isinstance(self.paat_hidden, int) or self.paat_hidden <= 0:
      fail("paat_hidden", "must be a positive integer")
    d = self.pose_map_dilation
    if not isinstance(d, int) or d < 1 or d % 2 == 0:
      fail("pose_map_dilation", "expected an odd integer >= 1")
    if not isinstance(self.pose_map_noise, int) or self.pose_map_noise < 0:
      fail("pose_map_noise", "expected an integer >= 0 (pixels)")
    if self.pose_aware and not self.streams.video:
      fail("variant", "PAAB/PAAT (config.model.paab_layers / paat_layer) act on the video "
           "stream; this variant has none")
    if self.pose_aware and self.pose_frames % self.video_frames:
      fail("pose_frames", f"PAAB/PAAT pose maps need T_h to be a multiple of "
           f"config.model.video_frames (T_l={self.video_frames})")

  # ------------------------------------------------------------------ derived
  @property
  def pose_aware(self) -> bool:
    """PAAB or PAAT is on (pose maps are computed for the video stream)."""
    return bool(self.paab_layers) or self.paat_layer > 0

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | "ModelConfig") -> "ModelConfig":
    """From `config.model` (ConfigDict or dict); unknown fields are an error."""
    if isinstance(cfg, ModelConfig):
      return cfg
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"config.model has unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def streams(self) -> Streams:
    return STREAMS[self.variant]

  @property
  def pixel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) uint8 frames are normalised with: pixel_mean/std, else the family's
    (the statistics its pretrained weights were trained with)."""
    mean, std = BACKBONES[self.family][1]
    return tuple(self.pixel_mean or mean), tuple(self.pixel_std or std)

  @property
  def arch(self) -> arch_lib.ViTArch:
    """The backbone's architecture, whatever the family (models/arch.py): image_size,
    patch_size, layers, width, heads, mlp_ratio."""
    if self.family == "clip":
      return self.clip
    if self.family == "timesformer":
      return self.timesformer
    kw = {} if self.image_size is None else {"image_size": self.image_size}
    return deit.get_config(self.backbone, **kw)

  @property
  def patch_geometry(self) -> tuple[int, int]:
    """(S, p): the backbone's input size and patch size, whatever the family (pose maps)."""
    return self.arch.image_size, self.arch.patch_size

  @property
  def timesformer(self) -> timesformer.TimeSformerConfig:
    """The TimeSformer architecture (family "timesformer"): T = video_frames, S = image_size."""
    kw = {"num_frames": self.video_frames}
    if self.image_size is not None:
      kw["image_size"] = self.image_size
    return timesformer.get_config(self.backbone, **kw)

  @property
  def clip(self) -> clip_vit.ClipVitConfig:
    kw = {} if self.image_size is None else {"image_size": self.image_size}
    if self.activation is not None:
      kw["activation"] = self.activation
    return clip_vit.get_config(self.backbone, **kw)

  @property
  def num_joints(self) -> int:
    """J = j * n (the paper's multi-person convention, Sec. 4)."""
    return self.joints_per_person * self.num_persons

  @property
  def heatmap_patch(self) -> int:
    return self.heatmap_patch_size or clip_vit.get_config(self.backbone).patch_size

  @property
  def pose_tokens(self) -> int:
    """N_P: tokens per pose frame, CLS included (J + 1 for coordinates)."""
    if self.pose_format == "coords":
      return self.num_joints + 1
    return (self.heatmap_size // self.heatmap_patch) ** 2 + 1

  @property
  def compute_dtype(self):
    """The jnp dtype activations are computed in ("auto" resolved on the current backend)."""
    return DTYPES[auto_dtype() if self.dtype == "auto" else self.dtype]


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` with every field at its default, validated after `overrides`."""
  cfg = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
  for k, v in overrides.items():
    if k not in cfg:
      raise ValueError(f"config.model has no field {k!r}; known: {sorted(cfg)}")
    cfg[k] = v
  ModelConfig.from_config(cfg)  # validate now: a bad experiment config fails at load time
  return cfg
