"""Named config presets: whole settings that belong together, made in one place.

`single_stage` is the flow-matching baseline the paper compares DFM with: the same model, data
and schedule with one stage (no pyramid). Benchmarks and tests call `single_stage(cfg)`; the
command line gets it with `--set dfm=single_stage` (a section set to a preset name, see
`dfm_video.config.loader.apply_override`), e.g. `scripts/demo.sh`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from dfm_video.config.schema import Config, DFMConfig


def single_stage_dfm(dfm: DFMConfig) -> DFMConfig:
    """`dfm` with one stage: no factors, stage 1 always trained."""
    return dataclasses.replace(dfm, num_stages=1, factors=[], stage_probs=[1.0])


def single_stage(cfg: Config) -> Config:
    """The flow-matching baseline of `cfg` (a copy): one stage, and `sample.steps` the total of its
    per-stage counts, so it samples with as many Euler steps as the DFM run (e.g. [30, 10] -> [40])."""
    out = copy.deepcopy(cfg)
    out.dfm = single_stage_dfm(out.dfm)
    out.sample.steps = [sum(cfg.sample.steps)]
    return out


# `--set SECTION=NAME`: section -> preset name -> the config it makes
SECTION_PRESETS: dict[str, dict[str, Callable[[Config], Config]]] = {"dfm": {"single_stage": single_stage}}
