# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # CLIP weights: PyTorch -> pgvt_jax (Flax)
#
# Converts a CLIP image tower and checks that the Flax model gives PyTorch's embeddings.
# With `CHECKPOINT` pointing at a real file (OpenAI `ViT-B-16.pt`, an open_clip `.bin`/`.safetensors`
# or a Hugging Face model directory) it converts that; without one (offline, CI) it builds a
# randomly initialised open_clip ViT-B/16 and converts it, so the demo runs anywhere.
#
#     python colab/convert_clip.py [CHECKPOINT] [OUTPUT_DIR] [--trust_torchscript]
#
# OpenAI's `.pt` files are TorchScript archives, which can run code when loaded: pass
# `--trust_torchscript` only for a file from a source you trust (else it is refused).

# %%
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pgvt_jax import convert_clip

argv = [a for a in sys.argv[1:] if not a.startswith("-")]
CHECKPOINT = argv[0] if argv else None
OUTPUT_DIR = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp()) / "clip_converted"
TRUST = ["--trust_torchscript"] if "--trust_torchscript" in sys.argv[1:] else []

# %% A PyTorch checkpoint to convert.
reference = None
if CHECKPOINT is None:
  import open_clip
  torch.manual_seed(0)
  reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
  CHECKPOINT = str(OUTPUT_DIR.parent / "open_clip_vit_b16_random.bin")
  torch.save(reference.state_dict(), CHECKPOINT)
  print(f"No checkpoint given: saved a random open_clip ViT-B/16 to {CHECKPOINT}")

# %% Convert with the command-line tool.
t0 = time.time()
subprocess.run([sys.executable, "-m", "pgvt_jax.convert_clip", f"--checkpoint={CHECKPOINT}",
                f"--output_dir={OUTPUT_DIR}", "--overwrite", *TRUST], check=True)
config, params = convert_clip.load(OUTPUT_DIR)
print(f"Converted in {time.time() - t0:.1f}s -> {OUTPUT_DIR}: {config}")

# %% Embeddings from the Flax model (NHWC, CLIP-normalised input).
rng = np.random.default_rng(0)
images = rng.standard_normal((2, config.image_size, config.image_size, 3), np.float32)
flax_emb = convert_clip.encode_image(OUTPUT_DIR, images)
print("Flax embedding:", flax_emb.shape, flax_emb[0, :4])

# %% Compare with PyTorch (when we built the reference here).
if reference is not None:
  with torch.no_grad():
    torch_emb = reference.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  err = float(np.abs(flax_emb - torch_emb).max())
  print(f"max |Flax - PyTorch| = {err:.2e}")
  assert err < 1e-4, err
