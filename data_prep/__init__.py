"""Raw dataset files -> TFDS ArrayRecord records (frames + aligned 2D poses).

  python -m data_prep.build --dataset=diving48 --manual_dir=... --data_dir=...
  data_prep.datasets.synthetic.build(data_dir)   # the built-in demo dataset

Modules: `build` (CLI), `builder` (shared TFDS builder, summary), `process`
(one video -> one record; options), `beam_build` (the same on Apache Beam),
`datasets/` (one builder per dataset), `video` (PyAV decode, JPEG), `poses`
(pose file readers), `align` (poses -> stored frames), `safe_pickle`
(allow-listed unpickler), `records` (schema, `decode_example`, `RawFrames`),
`skeletons` (joint layouts), `extractors` (pose models for videos without pose
files), `synthetic` and `multiview` (the built-in worlds), `measure`.

The lowest layer of the repo: it imports no other repo package, and `pgvt_jax`
(records -> batches -> step) imports it (docs/data.md "Import direction").
See docs/data.md.
"""
