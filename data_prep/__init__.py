"""Raw dataset files -> TFDS ArrayRecord records (frames + aligned 2D poses).

  python -m data_prep.build --dataset=diving48 --manual_dir=... --data_dir=...
  data_prep.synthetic.build(data_dir)        # the built-in demo dataset

Modules: `build` (CLI), `builder` (shared TFDS builder, options, summary),
`datasets/` (one builder per dataset), `video` (PyAV decode, JPEG), `poses`
(pose file readers), `align` (poses -> stored frames), `safe_pickle`
(allow-listed unpickler), `records` (schema, `decode_example`, `RawFrames`),
`extractors` (pose models for videos without pose files), `synthetic`,
`measure`. See docs/data.md.
"""
