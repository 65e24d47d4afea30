"""Ray Data preprocessing: clips -> autoencoder latents -> pyramid shards (see docs/data.md).

Stages, one module each: `sources` (what to process, labels), `decode` (frames), `encode`
(codec + pyramid), `writer` (shards, rejects, stats, manifest); `preprocess` chains them and is
the entry point. `demo_clips` cuts short real clips for tests, benchmarks and the demo.
Imports `dfm_video`; `dfm_video` never imports this package.
"""
