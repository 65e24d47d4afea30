"""Ray Data preprocessing: clips -> autoencoder latents -> pyramid shards (see docs/data.md).

Stages, one module each: `sources` (what to process, labels, ignored files), `decode` (frames by
presentation time), `isolate` (each clip decoded in a killable child process; imports `decode`),
`encode` (codec + pyramid, clip-by-clip retry), `writer` (a batch -> `dfm_video.data.store.write_clips`),
`stages` (the decode task and the actors of the split and fused layouts, which write their own
shards; imports `isolate`, `encode`, `writer`), `resources`
(resource plan, autoscaling wait, per-node preflight); `preprocess` chains them and is the entry
point. The dataset's files have one home: `dfm_video.data.store` / `dfm_video.data.schema`.
`demo_clips` cuts short real clips for tests, benchmarks and the demo.
Imports `dfm_video`; `dfm_video` never imports this package.
"""
