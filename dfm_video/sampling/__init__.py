"""Sampling: the generator and the distributed runner behind `python -m dfm_video.sample`.

`generator` (load weights, resolve labels, generate, decode, write), `plan` (labels, per-sample
noise, which rank makes which batch), `writer` (file names, atomic writes, the folder's settings
record), `codec` (finding the autoencoder), `runner` (the loop over this rank's batches with resume
and progress), `launch` (launcher environment and the few collectives). Nothing here imports
`dfm_video.train`; training and evaluation use the names below, not the submodules.
"""

from dfm_video.sampling.generator import (
    Generator,
    decode_latents,
    generate,
    load_generator,
    resolve_labels,
    write_outputs,
)
from dfm_video.sampling.launch import Launch
from dfm_video.sampling.plan import global_batches
from dfm_video.sampling.runner import run as run_sampling
from dfm_video.sampling.writer import RECORD as SAMPLING_RECORD
from dfm_video.sampling.writer import REPORT as SAMPLES_REPORT

__all__ = [
    "Generator",
    "Launch",
    "SAMPLES_REPORT",
    "SAMPLING_RECORD",
    "decode_latents",
    "generate",
    "global_batches",
    "load_generator",
    "resolve_labels",
    "run_sampling",
    "write_outputs",
]
