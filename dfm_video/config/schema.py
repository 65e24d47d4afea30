"""Typed configuration for every dfm-video command.

One dataclass per section; a string literal under each field documents it (torchtitan's habit).
Unknown keys, wrong types and missing required values are rejected by `dfm_video.config.loader`,
never silently ignored. Batch sizes and the DeepSpeed JSON are derived from these fields, never
written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


@dataclass
class ModelConfig:
    """3D DiT architecture (`dfm_video.models`)."""

    name: str = "DiT3D-S"
    """Size from the registry: DiT3D-S, DiT3D-B, DiT3D-L, DiT3D-XL."""
    depth: Optional[int] = None
    """Override the registry's number of blocks (tiny test models)."""
    hidden_size: Optional[int] = None
    """Override the registry's width."""
    num_heads: Optional[int] = None
    """Override the registry's number of attention heads."""
    in_channels: int = 16
    """Latent channels C of the autoencoder the shards were encoded with."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (pt, ph, pw) of the FINEST stage; coarser stages' patches derive from the factors."""
    num_classes: int = 700
    """Number of class labels (700 for Kinetics-700); one extra null class is added for CFG."""
    class_dropout: float = 0.1
    """Probability of replacing the label by the null class during training (CFG)."""
    mlp_ratio: float = 4.0
    """MLP hidden width / model width."""
    qk_norm: bool = True
    """RMS-normalise queries and keys before attention (stabilises bf16 training)."""
    stage_embedding: bool = True
    """Add a learned embedding of the current stage index to the conditioning (paper: yes)."""
    rope_theta: float = 10000.0
    """Base of the 3D axial rotary position embedding."""
    attention: Literal[
        "auto",
        "sdpa",
        "sdpa_cudnn",
        "sdpa_flash",
        "sdpa_efficient",
        "sdpa_math",
        "flash4",
        "flash2",
        "flash",
        "xformers",
    ] = "auto"
    """Attention backend (dfm_video/models/attention.py): `sdpa` is PyTorch's own pick, `sdpa_*` one SDPA
    kernel, `flash4` FlashAttention-4, `flash2` flash-attn 2, `flash` the first of those that runs, `xformers`.
    `auto`: the fastest measured on this GPU at this head dim (models/attention_measured.json), else `sdpa`."""
    kernels: Literal["auto", "triton", "torch"] = "auto"
    """Fused ops: Triton on CUDA when importable (`auto`), or the pure-torch references."""
    activation_checkpointing: Union[bool, Literal["none", "selective", "full", "auto"]] = "none"
    """Activation memory policy of the blocks in training. `none`: keep every activation. `selective`:
    keep the matmul and attention outputs, recompute the elementwise ops (norms, modulation, RoPE,
    GELU) in the backward pass. `full`: keep only each block's input and recompute the whole block.
    `auto`: the trainer's memory planner (`dfm_video.models.memory`) picks the cheapest of the three
    that fits the GPU's memory at this token count, micro batch, ZeRO stage and sequence-parallel
    degree, and refuses a layout that fits with none. `true` means `full`, `false` means `none`."""
    compile: Union[bool, Literal["auto"]] = "auto"
    """torch.compile each DiT block in place (regional: one graph shared by all blocks, in training and
    sampling). `auto`: on CUDA, unless the attention core was replaced from outside (sequence parallelism)."""

    def __post_init__(self) -> None:
        if self.activation_checkpointing is True:
            self.activation_checkpointing = "full"
        elif self.activation_checkpointing is False:
            self.activation_checkpointing = "none"

    upsample_factors: Optional[list[tuple[int, int, int]]] = None
    """Per-stage input upsampling (1, fh, fw), coarse to fine (len = S), fh/fw in {1, 2}; None = none. A stage
    with (1, 2, 2) is upsampled 2x (nearest) before its patch embedder, patchified with twice its patch, and its
    output averaged back down: how a DFM fine-tune's coarse stage reuses a pretrained model's (1, 2, 2) patch
    (DFM_METHOD.md 6b). Costs 4x that stage's patch-embedder and head FLOPs (`dfm_video.models.flops`)."""


@dataclass
class DFMConfig:
    """Decomposable Flow Matching (`dfm_video.dfm`); see shared/DFM_METHOD.md."""

    num_stages: Optional[int] = None
    """Pyramid stages S; follows from `factors` (S = len(factors) + 1) and need not be written; a value
    given must agree with `factors` (config validation). 1 is plain flow matching, the baseline:
    `--set dfm=single_stage` (`dfm_video.config.single_stage`) sets this section and `sample.steps` for it."""
    factors: list[tuple[int, int, int]] = field(default_factory=lambda: [(1, 2, 2)])
    """Resampling factor (ft, fh, fw) from stage i+1 to stage i+2, coarse to fine; len = S - 1."""
    temporal_mode: Literal["causal", "uniform"] = "causal"
    """How a temporal factor 2 treats frames: `causal` keeps frame 0 apart at every level
    (T = 1 + 2k, what causal video VAEs produce); `uniform` pools all frames in pairs (even T)."""
    stage_probs: list[float] = field(default_factory=lambda: [0.9, 0.1])
    """p_q: probability of training stage q (coarse to fine); must sum to 1, len = S."""
    stage_sampling: Literal["per_sample", "per_batch"] = "per_sample"
    """Draw the trained stage Q per sample (default) or once per batch."""
    current_loc: float = 0.0
    """Logit-normal location of t for the trained stage Q."""
    current_scale: float = 1.0
    """Logit-normal scale of t for the trained stage Q."""
    earlier_loc: float = 1.5
    """Logit-normal location of t for stages earlier than Q (biased towards clean)."""
    earlier_scale: float = 1.0
    """Logit-normal scale of t for stages earlier than Q."""
    standardize: Optional[bool] = None
    """Scale each level to unit std with dataset statistics. None (default) follows the data, as the
    paper does: on for video, off for image (T = 1) datasets; the trainer logs the choice."""

    def __post_init__(self) -> None:
        if self.num_stages is None:
            self.num_stages = len(self.factors) + 1


@dataclass
class MixSource:
    """One dataset of `data.mix`."""

    shards: str = ""
    """Directory of shards written by `data_pipeline.preprocess`."""
    weight: float = 1.0
    """Share of the micro-batches drawn from this dataset (weights are normalised over the mix)."""


@dataclass
class DataConfig:
    """Training data: preprocessed shards (`dfm_video.data`)."""

    shards: str = ""
    """Directory of shards written by `data_pipeline.preprocess`."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    shuffle: bool = True
    """Shuffle samples each epoch (deterministically from train.seed and the epoch)."""
    drop_incompatible: bool = False
    """Skip (and count) samples whose latent shape differs from the majority bucket instead of failing."""
    mix: list[MixSource] = field(default_factory=list)
    """Several datasets trained together (e.g. videos and images), instead of `shards`; each micro-batch
    comes from one of them, in proportion to the weights (`dfm_video.data.mixture`)."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (paper values as defaults)."""

    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    warmup_steps: int = 10000
    """Linear warmup from 0 to lr."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate shape after warmup."""
    min_lr_ratio: float = 0.0
    """Final lr / peak lr of the cosine schedule."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping threshold (0 disables)."""
    fused: Union[bool, Literal["auto"]] = "auto"
    """AdamW implementation: `true` is torch's fused kernel (one launch for all parameters, CUDA and
    CPU), `false` the multi-tensor loop (torch's foreach); `auto` fuses on CUDA, where the step is on
    the critical path, and keeps the loop on CPU."""


@dataclass
class DistributedConfig:
    """DeepSpeed ZeRO and precision; the DeepSpeed JSON is generated from these fields."""

    zero_stage: int = 2
    """ZeRO stage 0-3."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Training precision (fp16 is not supported: DFM trains in bf16 like the paper)."""
    micro_batch_size: int = 1
    """Samples per rank per forward pass."""
    global_batch_size: int = 256
    """Samples per optimizer step over all ranks; gradient accumulation is derived from it."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO >= 1)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; auto = nccl on CUDA, gloo on CPU."""
    sequence_parallel: int = 1
    """Ranks that share one batch and split its tokens (DeepSpeed-Ulysses); must divide the world
    size, the attention heads and the tokens per sample. Data parallelism runs across the groups."""
    deepspeed_overrides: Any = None
    """A DeepSpeed JSON fragment (monitor, communication buckets, ...) merged into the generated config, validated."""


@dataclass
class TrainConfig:
    """The training loop (`dfm_video.train`)."""

    output_dir: str = "outputs/train"
    """Run directory: checkpoints, TensorBoard logs, exports."""
    steps: int = 200000
    """Optimizer steps to train."""
    seed: int = 0
    """Seed for parameters, data order, noise and timesteps."""
    log_every: int = 100
    """Steps between metric logs (the host syncs only then)."""
    ckpt_every: int = 5000
    """Steps between checkpoints."""
    keep_last: int = 3
    """Checkpoints kept on disk."""
    ema_decay: float = 0.9999
    """EMA decay of the weights used for sampling."""
    max_nonfinite: int = 5
    """Stop after this many consecutive steps with a non-finite loss."""
    peak_tflops: float = 989.0
    """Datasheet dense bf16 peak per device for MFU, as the field reports it (H100/H200 SXM: 989)."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    ckpt_every_minutes: float = 0.0
    """Also checkpoint when this many minutes passed since the last one (0 = only every ckpt_every steps)."""
    measured_peak_tflops: float = 752.0
    """Measured dense bf16 matmul peak per device, a second MFU column (H100: 752, H200: 786; PLATFORM_NOTES)."""
    progress: bool = True
    """Progress bar with ETA on rank 0 (the metric lines every log_every steps are printed either way)."""
    sample_every: int = 0
    """Steps between EMA sample videos written during training (0 = never): mp4 under
    {output_dir}/samples/step_N and TensorBoard videos, fixed labels and seed, the sample.* sampler."""
    sample_count: int = 3
    """Videos per in-training sample (labels cycle through the classes)."""
    wandb: bool = False
    """Also log metrics (same names) and sample videos to Weights & Biases (optional extra: wandb)."""
    wandb_project: str = "dfm-video"
    """W&B project name."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """`offline` writes the run under {output_dir}/wandb with no network (`wandb sync` later)."""
    init_from: str = ""
    """Start a NEW run from these weights (an export folder, a run directory, a checkpoint folder, or a
    DeepSpeed ZeRO-2/3/universal checkpoint folder): step, optimizer, LR schedule and data order start
    fresh, the EMA starts from the loaded weights. A one-stage (flow-matching) source initialises an
    S-stage model the paper's way (core and coarse stage copied, finer stages zeroed; README, "Fine-tune").
    Ignored, with a log line, when the run directory already has checkpoints to resume."""
    init_strict: bool = True
    """Refuse any load that leaves a source tensor unused or a core tensor unloaded, or whose shapes
    differ. False allows the documented partial loads: a different class count (class table
    re-initialised) and source tensors the model does not have (ignored); listed in init_from.json."""
    init_key_map: str = ""
    """Key map for sources whose parameter names differ from ours: a JSON file of [pattern, name]
    or [pattern, name, reshape] rules (`dfm_video.train.init_from.load_key_map`); "" = our names."""


@dataclass
class SampleConfig:
    """Stage-wise generation (`dfm_video.sample`)."""

    steps: list[int] = field(default_factory=lambda: [30, 10])
    """Euler steps per stage, coarse to fine (len = S)."""
    tau: float = 0.9
    """A stage hands over to the next one when its t reaches tau."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale (1 = no guidance)."""
    cfg_interval: Optional[tuple[float, float]] = None
    """Guide a stage only while its t lies in [a, b]; None guides at every t."""
    num_samples: int = 4
    """Videos to generate."""
    seed: int = 0
    """Seed of the initial noise."""
    cuda_graphs: bool = False
    """Replay the network call as a CUDA graph (one capture per input shape; shapes are static while
    sampling). CUDA only; pays off at small batches where kernel launches dominate."""


@dataclass
class PreprocessConfig:
    """The Ray preprocessing job (`data_pipeline.preprocess`)."""

    input_type: Literal["kinetics", "folder", "images"] = "kinetics"
    """Kinetics-700 CSV + clip root, a folder of videos, or an ImageNet-style image folder."""
    annotations: str = ""
    """Kinetics annotation CSV (label,youtube_id,time_start,time_end,split)."""
    input_dir: str = ""
    """Clip root (Kinetics: {split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4) or folder."""
    labels_file: str = ""
    """Text file of label names, one per line: line i has id i (stable ids)."""
    split: str = "train"
    """Kinetics split to process."""
    output_dir: str = "outputs/shards"
    """Where shards, statistics, labels, manifest and rejects go."""
    num_frames: int = 17
    """Frames sampled per clip (causal VAEs want 1 + 4k)."""
    fps: float = 8.0
    """Target frame rate of the sampled frames."""
    resolution: tuple[int, int] = (64, 64)
    """Output frame size (H, W) after resize and centre crop."""
    decoder: Literal["decord", "pyav", "torchcodec", "torchcodec_cuda"] = "decord"
    """Video decoder: decord, PyAV, torchcodec on the CPU, or torchcodec on the GPU (NVDEC; needs the
    `fused` layout, whose GPU actor's decode processes see its GPU). Frames are equal across decoders
    to the codec's rounding; PyAV is the fallback when another decoder cannot read a file."""
    autoencoder: Literal["pixel", "cogvideox", "wan", "kl"] = "pixel"
    """Latent codec: weight-free space-to-depth `pixel`, or a diffusers VAE."""
    autoencoder_path: str = ""
    """Local directory of the diffusers VAE (never a hub id)."""
    pixel_patch: tuple[int, int, int] = (1, 4, 4)
    """Space-to-depth patch (pt, ph, pw) of the pixel codec."""
    samples_per_shard: int = 256
    """Clips per shard file = clips per call of an encoder (or fused) actor, which writes that shard."""
    decode_cpus: float = 1.0
    """CPUs per decode task."""
    decode_concurrency: Optional[int] = None
    """Most decode tasks running at once (None = as many as the CPUs allow)."""
    decode_threads: int = 1
    """FFmpeg threads per decode task (1: parallelism comes from tasks, not threads)."""
    encode_actors: int = 1
    """Autoencoder actors."""
    encode_cpus: float = 0.5
    """CPUs per autoencoder actor (fractional: Ray deadlocks on small machines otherwise)."""
    encode_gpus: float = 0.0
    """GPUs per autoencoder actor (0 on CPU-only machines)."""
    autoencoder_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision the autoencoder runs in (storage precision: `latent_dtype`)."""
    writer_cpus: float = 0.25
    """Unused since the encoder actors write their own shards (kept so older configs still load)."""
    batch_size: int = 4
    """Clips per autoencoder batch."""
    ray_address: str = ""
    """Ray cluster address; empty starts an embedded local Ray."""
    num_cpus: Optional[int] = None
    """CPUs of the embedded local Ray (None = all)."""
    limit: Optional[int] = None
    """Process at most this many clips (smoke tests)."""
    strict: bool = False
    """Exit non-zero when any clip was rejected."""
    retry_rejects: bool = False
    """Process clips rejected by an earlier run again (default: a rejected clip counts as done)."""
    progress: bool = True
    """Show a progress bar (the final summary line is always printed)."""
    layout: Literal["split", "fused"] = "split"
    """`split`: CPU decode tasks feed autoencoder actors; `fused`: one actor per GPU decodes (child
    processes), encodes and writes its own shards."""
    clips_per_task: int = 4
    """Clips per decode task (split layout): a retried task redoes at most this many."""
    decode_workers: int = 2
    """Decoder child processes per fused actor."""
    decode_timeout_s: float = 120.0
    """A clip whose decoding takes longer is rejected ("decode timeout"); sized for 10 s clips."""
    decode_memory_mb: Optional[int] = None
    """Address-space cap of each decoder child process (None = no cap)."""
    io_retries: int = 2
    """Retries of a clip after a transient I/O error before it is rejected."""
    latent_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage type of the latents in the shards (statistics are accumulated in float64 either way)."""
    resource_wait_s: float = 0.0
    """Wait this long for missing cluster resources (autoscaling clusters); 0 = refuse at once."""


@dataclass
class Config:
    """Everything one run needs; saved resolved beside shards, checkpoints and exports."""

    name: str = "dfm-video"
    """Run name."""
    model: ModelConfig = field(default_factory=ModelConfig)
    dfm: DFMConfig = field(default_factory=DFMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
