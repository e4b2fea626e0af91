"""The daily-living configs (Smarthome, NTU-60, N-UCLA; the PAAB/PAAT paper's recipe).

Tiny: `<config>:runlocal` through the real trainer for 2 steps, on in-memory clips whose
keypoints are in the dataset's own joint layout. Full size: the recipe's fields.
"""

import importlib
import json

import numpy as np
import pytest

from configs import adl_common
from data_prep import skeletons
from pgvt_jax import data, train

pytestmark = pytest.mark.usefixtures("fast_compiles")

MODULES = {"smarthome": "configs.smarthome", "ntu60": "configs.ntu60", "nucla": "configs.nucla"}


def _get(dataset, arg=None):
  return importlib.import_module(MODULES[dataset]).get_config(arg)


def _memory_source(layout: str, num_classes: int, n: int = 4) -> data.Source:
  sk = skeletons.get(layout)
  rng = np.random.default_rng(0)
  records = []
  for i in range(n):
    t = 10
    frames = rng.integers(0, 255, (t, 40, 48, 3), dtype=np.uint8)
    kp = rng.uniform(4, 36, (t, 1, sk.num_joints, 2)).astype(np.float32)
    records.append(dict(frames=frames, keypoints=kp,
                        keypoint_score=np.ones((t, 1, sk.num_joints), np.float32),
                        label=i % num_classes, video_id=f"clip{i}"))
  return data.Source(records, sk, num_classes)


@pytest.mark.e2e  # whole trainings (13-15 s each)
@pytest.mark.parametrize("dataset,arg", [
    ("nucla", "vit_b16"),             # baseline on CLIP + AIM
    ("smarthome", "paab,vit_b16"),    # PAAB on CLIP + AIM
    ("ntu60", "paat"),                # PAAT on TimeSformer (the default backbone)
    ("smarthome", "paab,public"),     # the public run's settings (Nesterov, decay all, ...)
])
def test_runlocal_trains_and_evaluates(dataset, arg, tmp_path, monkeypatch):
  config = _get(dataset, f"{arg},runlocal")
  source = _memory_source(adl_common.DATASETS[dataset]["layout"], config.model.num_classes)
  monkeypatch.setattr(data, "open_source", lambda cfg, split: source)
  config.async_checkpoints = False
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert set(metrics) == {"eval/top1", "eval/top5", "eval/mean_class_accuracy"}
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))


@pytest.mark.parametrize("dataset,protocol,classes,builder_dir,eval_split", [
    ("smarthome", "cs", 31, "toyota_smarthome/cs/1.0.0", "test"),
    ("smarthome", "cv2", 19, "toyota_smarthome/cv2/1.0.0", "test"),
    ("ntu60", "cvs1", 60, "ntu60_2d/cvs/1.0.0", "test_0"),
    ("ntu60", "cvs3", 60, "ntu60_2d/cvs/1.0.0", "test_90"),
    ("nucla", "cv3", 10, "nucla/cv3/1.0.0", "test"),
])
def test_protocol_selects_records(dataset, protocol, classes, builder_dir, eval_split):
  c = _get(dataset, f"protocol={protocol}")
  assert c.model.num_classes == classes
  assert c.data.builder_dir.endswith(builder_dir)
  assert c.data.eval_split == eval_split and c.data.train_split == "train"


@pytest.mark.parametrize("dataset,frames,rate,batch", [
    ("smarthome", 8, 32, 32), ("ntu60", 16, 4, 64), ("nucla", 8, 4, 64)])
def test_paper_recipe_is_the_default(dataset, frames, rate, batch):
  c = _get(dataset)
  o = c.optim
  assert (o.optimizer, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.005, 0.9, 1e-4)
  assert (o.schedule, tuple(o.lr_step_epochs), o.lr_step_factor) == ("steps", (11, 14), 0.1)
  assert c.num_epochs == 15 and o.warmup_epochs == 0
  assert c.data.train_batch_size == batch
  assert c.model.video_frames == c.data.num_frames == frames == c.data.pose_frames
  assert (c.data.eval_clips, c.data.eval_crops, c.eval_combine) == (10, 1, "max")
  assert c.model.image_size == 224
  assert (c.data.sampling, c.data.sampling_rate, c.data.target_fps) == ("fixed_rate", rate, 30)
  assert c.data.person_crop and tuple(c.data.crop_aspect) == (1.0, 1.0)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="protocol='cvs9'"):
    _get("ntu60", "protocol=cvs9")
  with pytest.raises(ValueError, match="choose one of"):
    _get("smarthome", "paab,paat")


def test_method_switches_and_ablations():
  c = _get("smarthome", "paab,vit_b16")
  assert tuple(c.model.paab_layers) == (12,) and c.model.paab_variant == "pa_sa"
  assert c.model.paat_layer == 0 and not c.aux_losses.get("paat", 0)
  c = _get("smarthome", "paat,vit_b16")
  assert c.model.paat_layer == 1 and c.model.paat_target == "p3d"
  assert c.aux_losses.paat == 1.6 and not tuple(c.model.paab_layers)
  c = _get("ntu60", "vit_b16,baseline")
  assert not tuple(c.model.paab_layers) and c.model.paat_layer == 0
  # Table 1a/b/d, Table 2, Fig. 4, Fig. 9.
  c = _get("ntu60", "vit_b16,paab_layers=1+12,paab_variant=joint_pa_sta")
  assert tuple(c.model.paab_layers) == (1, 12) and c.model.paab_variant == "joint_pa_sta"
  c = _get("nucla", "vit_b16,paat_layer=6,paat_target=p2d,paat_weight=0.3")
  assert c.model.paat_layer == 6 and c.model.paat_target == "p2d" and c.aux_losses.paat == 0.3
  c = _get("smarthome", "vit_b16,paab,paab_depth=3")  # Table 1c
  assert tuple(c.model.paab_layers) == (12,) and c.model.paab_depth == 3
  c = _get("smarthome", "vit_b16,paab,pose_map_random")
  assert c.model.pose_map_random
  c = _get("smarthome", "vit_b16,paat,pose_map_noise=20,pose_map_dilation=3")
  assert c.model.pose_map_noise == 20 and c.model.pose_map_dilation == 3
  c = _get("smarthome", "tiny,paab,runlocal")
  assert tuple(c.model.paab_layers) == (2,)  # after the last block of the tiny backbone
  with pytest.raises(ValueError, match="baseline uses no pose maps"):
    _get("smarthome", "vit_b16,pose_map_noise=4")
  with pytest.raises(ValueError, match="paab_layers='x'"):
    _get("smarthome", "vit_b16,paab_layers=x")


def test_timesformer_is_the_default_backbone_and_trains_fully():
  c = _get("nucla")
  assert c.model.family == "timesformer" and c.model.backbone == "B/16"
  assert not c.freeze_backbone
  assert (c.model.drop_path, c.model.dropout) == (0.1, 0.0)  # TimeSformer's vit_base
  c = _get("nucla", "vit_b16")
  assert c.model.family == "clip" and c.freeze_backbone


def _flat(config):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return {"/".join(k): (tuple(v) if isinstance(v, list) else v) for k, v in
          traverse_util.flatten_dict(config.to_dict()).items()}


@pytest.mark.parametrize("dataset", ["smarthome", "ntu60", "nucla"])
def test_public_argument_is_the_public_run_and_changes_nothing_else(dataset):
  """`public` = dominickrei/PoseAwareVT's run (adl_common.PUBLIC); the default = the paper's."""
  frames = {"smarthome": 8, "ntu60": 16, "nucla": 8}[dataset]
  batch = adl_common.DATASETS[dataset]["batch"]
  for method in ("paab", "paat"):
    paper, public = _flat(_get(dataset, method)), _flat(_get(dataset, f"{method},public"))
    # The paper's values stay the default.
    assert paper["model/pose_map_dilation"] == 1 and paper["model/paab_drop_path"] == "sample"
    assert not paper["optim/nesterov"] and paper["optim/decay_rule"] == "aim"
    assert paper["aux_losses/paat"] == (1.6 if method == "paat" else 0.0)
    assert paper["data/train_batch_size"] == batch and paper["model/video_frames"] == frames
    # The public run's: 3x3 dilation, Nesterov, decay on every tensor, PAAB drop path as its
    # pose blocks, lambda 1, PAAB after block 1, batch 64, 16 frames on NTU and N-UCLA.
    want = {"model/pose_map_dilation": 3, "optim/nesterov": True, "optim/decay_rule": "all",
            "model/paab_drop_path": "public", "data/train_batch_size": 64,
            "data/eval_batch_size": 64}
    if method == "paat":
      want["aux_losses/paat"] = 1.0
    else:
      want["model/paab_layers"] = (1,)
    if dataset == "nucla":
      want.update({"model/video_frames": 16, "model/pose_frames": 16, "data/num_frames": 16,
                   "data/pose_frames": 16})
    for k, v in want.items():
      assert public[k] == v, k
    changed = {k for k in paper if paper[k] != public[k]}
    assert changed == {k for k in want if paper[k] != want[k]}, changed ^ set(want)


def test_public_argument_yields_to_named_arguments_and_baseline():
  c = _get("smarthome", "paat,public,paat_weight=2.0,pose_map_dilation=5")
  assert c.aux_losses.paat == 2.0 and c.model.pose_map_dilation == 5 and c.optim.nesterov
  c = _get("smarthome", "paab,public,paab_layers=12")
  assert tuple(c.model.paab_layers) == (12,) and c.model.pose_map_dilation == 3
  c = _get("smarthome", "public")            # the baseline has no pose maps to dilate
  assert c.model.pose_map_dilation == 1 and c.optim.decay_rule == "all"
  assert c.data.train_batch_size == 64 and not tuple(c.model.paab_layers)
