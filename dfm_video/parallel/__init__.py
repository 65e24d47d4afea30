"""Parallelism applied to the model from outside (torchtitan's habit): the model files stay free of
process groups. Sequence parallelism (DeepSpeed-Ulysses style): `validate` checks a config before
any process group exists, `groups` builds the process groups and the DeepSpeed `mpu`, `ulysses`
holds the autograd collectives and `apply` hooks a DiT3D so each rank processes 1/N of the tokens.
"""

from __future__ import annotations

from dfm_video.parallel.validate import check_sequence_parallel

__all__ = ["check_sequence_parallel"]
