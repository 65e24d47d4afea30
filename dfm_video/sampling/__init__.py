"""Sampling at scale behind `python -m dfm_video.sample`.

`plan` (labels, per-sample noise, which rank makes which batch), `writer` (file names, atomic
writes, the folder's settings record), `codec` (finding the autoencoder), `runner` (the loop over
this rank's batches with resume and progress), `dist` (launcher environment and the one final
collective). The model-level pieces (`load_generator`, `generate`) stay in `dfm_video.sample`.
"""
