"""Where stochastic depth drops, against the public PAAB/PAAT code (dominickrei/PoseAwareVT).

timm's DropPath (TimeSformer `timesformer/models/vit_utils.py`) draws once per row of the batch
it runs on. In the public `timesformer/models/vit.py` / `vit_poseblock.py` blocks the temporal
branch runs on `(b h w, t, m)` rows (one draw per clip and patch position) and is dropped BEFORE
`temporal_fc`; the spatial branch runs on `(b t, 1+N, m)` rows (one draw per clip and frame,
CLS rows included, before the frame mean). Our TimeSformer backbone already does both; our PAAB
does it with `drop_path_mode="public"` (config.model.paab_drop_path) and draws per clip by
default ("sample"), which must stay bit-identical to the code before the option existed.

The checks zero the other branches, so a block's output minus its input is one branch; a row
the draw dropped then adds exactly temporal_fc's bias (drop before the fc) or nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from pgvt_jax.models import factory, layers, paab, pose_aware, timesformer
from pgvt_jax.models.config import ModelConfig

KEEP = 0.5
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _decisions(res, ref, axes):
  """Per index of `axes`: True when `res` there is `ref / KEEP` (kept), False when it is 0
  (dropped); fails if a slice is neither, i.e. the draw is not shared within it."""
  lead = tuple(res.shape[a] for a in axes)
  res = np.moveaxis(np.asarray(res), axes, range(len(axes))).reshape(lead + (-1,))
  ref = np.moveaxis(np.asarray(ref), axes, range(len(axes))).reshape(lead + (-1,))
  kept = np.zeros(lead, bool)
  for i in np.ndindex(*lead):
    assert np.abs(ref[i]).max() > 1e-2, "reference branch too small to tell the two apart"
    dropped = np.allclose(res[i], 0.0, atol=1e-5)
    kept[i] = np.allclose(res[i], ref[i] / KEEP, rtol=1e-4, atol=1e-5)
    assert dropped != kept[i], f"slice {i} is neither dropped nor kept whole"
  assert kept.any() and (~kept).any(), "draws all alike: use another key"
  return kept


def _zero(params, *paths):
  params = jax.tree.map(lambda x: x, params)
  for path in paths:
    node = params
    for k in path.split("/"):
      node = node[k]
    for leaf in list(node):
      node[leaf] = jnp.zeros_like(node[leaf])
  return params


def _paab_case(variant, mode, c, seed=0, b=4, t=3, n=8, d=16):
  r = np.random.default_rng(seed)
  cls = r.normal(size=(b, c, d)).astype(np.float32)
  patches = r.normal(size=(b, t, n, d)).astype(np.float32)
  p2d = np.ones((b, t, n), np.float32)  # every token is a pose token: nothing is restored
  block = paab.PAAB(num_heads=4, variant=variant, drop_path=1 - KEEP, drop_path_mode=mode)
  params = _randomize(block.init(jax.random.key(1), cls, patches, p2d)["params"])
  return block, params, cls, patches, p2d


def _randomize(params):
  """Values well away from 0 in every branch, biases included."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


def _run(block, params, cls, patches, p2d, key=3):
  ev = block.apply({"params": params}, cls, patches, p2d)
  tr = block.apply({"params": params}, cls, patches, p2d, train=True,
                   rngs={"drop_path": jax.random.key(key)})
  return [np.asarray(x) for x in ev], [np.asarray(x) for x in tr]


# ------------------------------------------------------------------ TimeSformer backbone
def test_timesformer_temporal_branch_drops_per_clip_and_patch_before_temporal_fc():
  """Already the public vit.py's placement (issue 21, item 4): nothing to change here."""
  cfg = timesformer.get_config("Ti/8")                       # T 4, N 16, D 64
  blk = timesformer.DividedBlock(cfg, drop_path_rate=1 - KEEP)
  r = np.random.default_rng(0)
  cls = r.normal(size=(4, 1, cfg.width)).astype(np.float32)
  patches = r.normal(size=(4, cfg.num_frames, cfg.num_patches, cfg.width)).astype(np.float32)
  params = _randomize(blk.init(jax.random.key(0), cls, patches)["params"])
  params = _zero(params, "attn/proj", "mlp/fc2")             # only the temporal branch left
  bias = np.asarray(params["temporal_fc"]["bias"])
  ev = blk.apply({"params": params}, cls, patches)
  tr = blk.apply({"params": params}, cls, patches, train=True,
                 rngs={"drop_path": jax.random.key(5)})
  np.testing.assert_allclose(tr[0], cls, atol=1e-6)
  res_ev, res_tr = ev[1] - patches - bias, tr[1] - patches - bias   # (B, T, N, D)
  kept = _decisions(res_tr, res_ev, axes=(0, 2))             # one draw per (clip, patch)
  assert any(0 < k.sum() < cfg.num_patches for k in kept)    # not one draw per clip


# ------------------------------------------------------------------ PAAB, "public"
def test_paab_public_temporal_drops_per_clip_and_patch_before_temporal_fc():
  block, params, cls, patches, p2d = _paab_case("fact_pa_sta", "public", c=1)
  params = _zero(params, "attn/out", "mlp/fc2")
  bias = np.asarray(params["temporal_fc"]["bias"])
  (ev_cls, ev), (tr_cls, tr) = _run(block, params, cls, patches, p2d)
  np.testing.assert_allclose(tr_cls, cls, atol=1e-6)
  kept = _decisions(tr - patches - bias, ev - patches - bias, axes=(0, 2))
  assert any(0 < k.sum() < patches.shape[2] for k in kept)
  # The default draws once per clip AFTER temporal_fc: a dropped clip adds nothing at all.
  block = block.clone(drop_path_mode="sample")
  (_, ev), (_, tr) = _run(block, params, cls, patches, p2d)
  _decisions(tr - patches, ev - patches, axes=(0,))


def test_paab_public_spatial_drops_per_clip_and_frame_before_the_cls_mean():
  # One CLS per frame (C == T): frame t's CLS is dropped with frame t's patches.
  block, params, cls_t, patches, p2d = _paab_case("pa_sa", "public", c=3)
  params = _zero(params, "mlp/fc2")                          # only the attention branch left
  cls1 = cls_t[:, :1]
  cls_t = np.broadcast_to(cls1, cls_t.shape).copy()          # the copies a single CLS gets
  (ev_cls, ev), (tr_cls, tr) = _run(block, params, cls_t, patches, p2d)
  full = lambda c, x: np.concatenate([(c - cls_t)[:, :, None], x - patches], axis=2)
  kept = _decisions(full(tr_cls, tr), full(ev_cls, ev), axes=(0, 1))   # (B, T)
  assert any(0 < k.sum() < patches.shape[1] for k in kept)   # not one draw per clip
  # One CLS per clip (C == 1): the same draws (same key, same first draw), applied to each
  # frame's CLS output before they are averaged.
  (_, _), (tr1_cls, tr1) = _run(block, params, cls1, patches, p2d)
  np.testing.assert_allclose(tr1, tr, rtol=1e-5, atol=1e-5)
  y_cls = ev_cls - cls_t                                     # per-frame CLS outputs (B, T, D)
  want = (kept[..., None] * y_cls / KEEP).mean(1, keepdims=True)
  np.testing.assert_allclose(tr1_cls - cls1, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ PAAB, default unchanged
class _PAABBefore(paab.PAAB):
  """PAAB's stochastic depth as it was before `drop_path_mode` (commit 4872bc9), verbatim."""

  def temporal(self, patches, train):
    xt = jnp.swapaxes(patches, 1, 2)
    b, n, t, d = xt.shape
    y = self._attention("temporal_attn")(self._ln("temporal_norm", xt).reshape(b * n, t, d),
                                         record="temporal")
    y = nn.Dense(d, kernel_init=layers.trunc_normal(), dtype=self.dtype, name="temporal_fc")(y)
    (y,) = self._drop(train, jnp.swapaxes(y.reshape(b, n, t, d), 1, 2))
    return patches + y

  @nn.compact
  def __call__(self, cls, patches, p2d, *, train=False):
    b, t, n, d = patches.shape
    pose = p2d > 0
    cls_in, patches_in = cls, patches
    if self.variant == "fact_pa_sta":
      patches = self.temporal(patches, train)
    attend = self.joint_attention if self.variant == "joint_pa_sta" else self.spatial_attention
    y_cls, y = attend(cls, patches, pose)
    y_cls, y = self._drop(train, y_cls, y)
    cls, patches = cls + y_cls, patches + y
    x = jnp.concatenate([cls, patches.reshape(b, t * n, d)], axis=1)
    x = layers.Mlp(int(d * self.mlp_ratio), "gelu", kernel_init=layers.trunc_normal(),
                   dtype=self.dtype, name="mlp")(self._ln("ln_2", x))
    y_cls, y = jnp.split(x, [cls.shape[1]], axis=1)
    y_cls, y = self._drop(train, y_cls, y.reshape(b, t, n, d))
    cls, patches = cls + y_cls, patches + y
    patches = jnp.where(pose[..., None], patches, patches_in.astype(patches.dtype))
    return cls.astype(cls_in.dtype), patches.astype(patches_in.dtype)


@pytest.mark.parametrize("variant", paab.VARIANTS)
@pytest.mark.parametrize("c", [1, 3])
def test_paab_default_drop_path_is_bit_identical_to_before(variant, c):
  block, params, cls, patches, p2d = _paab_case(variant, "sample", c=c, seed=4)
  p2d = (np.random.default_rng(5).random(p2d.shape) < 0.4).astype(np.float32)
  before = _PAABBefore(**{f: getattr(block, f) for f in ("num_heads", "variant", "drop_path")})
  assert block.drop_path_mode == paab.PAAB(num_heads=4).drop_path_mode == "sample"
  for train in (False, True):
    kw = dict(train=train, rngs={"drop_path": jax.random.key(7)})
    new = block.apply({"params": params}, cls, patches, p2d, **kw)
    old = before.apply({"params": params}, cls, patches, p2d, **kw)
    for a, o in zip(new, old):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(o))


def test_paab_drop_path_mode_is_validated_and_reaches_the_blocks(monkeypatch):
  with pytest.raises(ValueError, match="config.model.paab_drop_path='frame'"):
    ModelConfig(paab_drop_path="frame")
  with pytest.raises(ValueError, match="paab_drop_path='frame'"):
    _run(*_paab_case("pa_sa", "frame", c=1))
  seen = []

  class Spy(paab.PAAB):
    @nn.compact
    def __call__(self, cls, patches, p2d, *, train=False):
      seen.append(self.drop_path_mode)
      return cls, patches

  monkeypatch.setattr(pose_aware, "PAAB", Spy)  # every family builds its PAABs there
  for family, backbone in (("timesformer", "Ti/8"), ("clip", "Ti/8"), ("deit", "test")):
    m = ModelConfig(family=family, variant="video_only", backbone=backbone, video_frames=4,
                    pose_frames=4, num_classes=3, paab_layers=(1,), paab_drop_path="public")
    model = factory.create_model(m)
    jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, factory.dummy_batch(m)))
  assert seen == ["public", "public", "public"]
