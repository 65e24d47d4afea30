"""DFM core: pure tensor code (no nn.Module state), device- and dtype-agnostic.

Convention everywhere: t = 0 is pure noise, t = 1 is data; latents are (B, C, T, H, W) and an
image is T = 1. Stages are listed coarse to fine.
"""

from dfm_video.dfm.loss import LossOutput, NoisyLevels, dfm_loss, noisy_levels, sample_noise
from dfm_video.dfm.objective import dfm_objective, drop_labels
from dfm_video.dfm.pyramid import decompose, downsample, level_shapes, recompose, upsample
from dfm_video.dfm.schedule import phase_ends, sampling_schedule, schedule_activity
from dfm_video.dfm.solver import count_nfe, euler_sample, guided
from dfm_video.dfm.standardize import LevelMoments, LevelStats, destandardize, standardize
from dfm_video.dfm.timesteps import StageTimesteps, TimestepParams, sample_timesteps

__all__ = [
    "LevelMoments",
    "LevelStats",
    "LossOutput",
    "NoisyLevels",
    "StageTimesteps",
    "TimestepParams",
    "count_nfe",
    "decompose",
    "destandardize",
    "dfm_loss",
    "dfm_objective",
    "drop_labels",
    "downsample",
    "euler_sample",
    "guided",
    "level_shapes",
    "noisy_levels",
    "phase_ends",
    "recompose",
    "sample_noise",
    "sample_timesteps",
    "sampling_schedule",
    "schedule_activity",
    "standardize",
    "upsample",
]
