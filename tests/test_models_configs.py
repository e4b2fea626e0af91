"""The experiment configs load, build a valid model config, and keep data in sync with it."""

import pytest

from configs import common as configs_common
from configs import diving48, gym99, gym288, k400
from configs.ablations import table4, table6
from pgvt_jax.models.config import ModelConfig


@pytest.mark.parametrize("module,arg,expect", [
    (diving48, None, dict(variant="pgvt", backbone="B/16", num_classes=48, pose_frames=48,
                          video_frames=16)),
    (diving48, "vit_l14,variant=video_only", dict(variant="video_only", backbone="L/14")),
    (diving48, "runlocal", dict(backbone="Ti/8", image_size=32)),
    (gym99, None, dict(num_classes=99)),
    (gym288, "vit_l14", dict(num_classes=288, backbone="L/14")),
    (k400, None, dict(num_classes=400, pose_frames=32, video_frames=32, num_persons=1)),
    (k400, "persons=2", dict(num_persons=2)),
    (table4, "row=2ii", dict(variant="video_only", video_frames=32)),
    (table4, "row=6i", dict(variant="pgvt_no_refined_pose")),
    (table6, "form=heatmap", dict(variant="pose_only", pose_format="heatmap")),
])
def test_configs_build_valid_model_configs(module, arg, expect):
  config = module.get_config(arg)
  m = ModelConfig.from_config(config.model)
  for k, v in expect.items():
    assert getattr(m, k) == v, k


@pytest.mark.parametrize("row", list(table4.ROWS))
def test_every_table4_row_builds(row):
  ModelConfig.from_config(table4.get_config(f"row={row}").model)
  ModelConfig.from_config(table4.get_config(f"row={row},runlocal").model)


def test_data_fields_follow_the_model_by_reference():
  config = diving48.get_config()
  config.model.video_frames = 8
  config.model.num_persons = 2
  assert config.data.num_frames == 8
  assert config.data.num_joints == 34 and config.data.max_persons == 2


@pytest.mark.parametrize("arg,match", [
    ("vit_h14", "not a backbone"), ("variant", "not a backbone"), ("lr=3", "unknown"),
])
def test_bad_config_arguments(arg, match):
  with pytest.raises(ValueError, match=match):
    diving48.get_config(arg)
  with pytest.raises(ValueError, match="variant"):
    diving48.get_config("variant=nope")
  with pytest.raises(ValueError, match="row"):
    table4.get_config("row=8")
  assert configs_common.parse_arg("runlocal", runlocal=False).runlocal
