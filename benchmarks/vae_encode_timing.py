"""VAE encode seconds per clip at the k700 preprocessing shape (the GPU number docs/capacity.md needs).

    python benchmarks/vae_encode_timing.py            # CUDA, bf16, 1x3x49x512x512 (about 40-70 s on an H100/H200)
    python benchmarks/vae_encode_timing.py --quick    # CPU, float32, tiny shape (< 1 minute here)
    python benchmarks/vae_encode_timing.py --flops    # CPU: encoder FLOPs per clip, counted small, extrapolated

The CogVideoX-2b VAE architecture (diffusers `AutoencoderKLCogVideoX`) is built from its config
written out below, with random weights (timing does not depend on the weight values; nothing is
downloaded). One clip is encoded after a warm-up; the table gives seconds per clip (median of the
repeats) and peak GPU memory, plain and with tiling/slicing. The run stops starting new
measurements after `--budget-s` seconds so it ends well inside the device limit.
Needs only torch + diffusers (no ray, av, decord).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

# CogVideoX-2b `vae/config.json` (THUDM/CogVideoX-2b), written out so no hub access is needed.
COGVIDEOX_2B_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(128, 256, 256, 512),
    latent_channels=16,
    layers_per_block=3,
    act_fn="silu",
    norm_eps=1e-6,
    norm_num_groups=32,
    temporal_compression_ratio=4,
    sample_height=480,
    sample_width=720,
    scaling_factor=1.15258426,
    shift_factor=None,
    latents_mean=None,
    latents_std=None,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
# A tiny variant of the same architecture for --quick on CPU.
TINY_VAE = dict(
    COGVIDEOX_2B_VAE,
    down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3,
    block_out_channels=(8, 8, 8),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    sample_height=32,
    sample_width=32,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encode(vae, video: torch.Tensor, repeats: int, deadline: float) -> tuple[list[float], float, tuple]:
    """Seconds of each repeat (after one warm-up), peak memory in GiB and the latent shape."""
    device = video.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    shape: tuple = ()
    with torch.inference_mode():
        for i in range(repeats + 1):
            if i > 0 and time.time() > deadline:
                break
            sync(device)
            t0 = time.perf_counter()
            z = vae.encode(video).latent_dist.sample()
            sync(device)
            if i > 0:  # the first call is the warm-up (cuDNN autotune, allocator)
                times.append(time.perf_counter() - t0)
            shape = tuple(z.shape)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return times, peak, shape


def count_flops(frames: int, size: int) -> int:
    """FLOPs of one encode of the full CogVideoX-2b VAE encoder, counted (torch FlopCounterMode) at
    small clips on the CPU and extrapolated: convolutions are linear in the pixel count, and the
    frame dependence is fitted from two frame counts (causal 3D convs see 1 + 4k frames)."""
    from diffusers import AutoencoderKLCogVideoX
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(**COGVIDEOX_2B_VAE).eval()
    vae.decoder = None
    side = 64
    counts = {}
    for f in (9, 17):
        video = torch.zeros(1, 3, f, side, side)
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            vae.encode(video)
        counts[f] = fc.get_total_flops()
    per_frame = (counts[17] - counts[9]) / 8
    base = counts[9] - 9 * per_frame
    scale = (size / side) ** 2
    total = (base + frames * per_frame) * scale
    print(f"# CogVideoX-2b VAE encoder FLOPs (counted at 9 and 17 frames x {side}^2 on CPU, extrapolated)")
    print(f"{'frames':>6} {'size':>5} {'GFLOP':>10}")
    for f in (9, 17):
        print(f"{f:>6} {side:>5} {counts[f] / 1e9:>10.1f}  (counted)")
    print(f"{frames:>6} {size:>5} {total / 1e9:>10.1f}  (extrapolated: {total / 1e12:.2f} TFLOP per clip)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, float32, tiny VAE, 9 x 32 x 32 clip")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=70.0, help="start no new measurement after this many seconds")
    ap.add_argument("--flops", action="store_true", help="count encoder FLOPs on CPU (full architecture, small clips)")
    args = ap.parse_args(argv)
    if args.flops:
        return count_flops(args.frames, args.size)
    t_start = time.time()
    deadline = t_start + args.budget_s

    from diffusers import AutoencoderKLCogVideoX

    if args.quick:
        device, dtype, cfg, frames, size = torch.device("cpu"), torch.float32, TINY_VAE, 9, 32
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device (use --quick on CPU)", file=sys.stderr)
            return 2
        device, dtype, cfg, frames, size = (
            torch.device("cuda"),
            torch.bfloat16,
            COGVIDEOX_2B_VAE,
            args.frames,
            args.size,
        )
    torch.manual_seed(0)
    with torch.device(device):  # build the weights directly on the device (seconds instead of a CPU init)
        vae = AutoencoderKLCogVideoX(**cfg)
    vae = vae.to(device=device, dtype=dtype).eval()
    vae.decoder = None  # encode only: frees the decoder's memory
    params = sum(p.numel() for p in vae.parameters())
    video = torch.rand(1, 3, frames, size, size, device=device, dtype=dtype) * 2 - 1
    name = "cogvideox-2b-vae" if not args.quick else "cogvideox-tiny-vae"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# {name} ({params / 1e6:.3f} M encoder params, random weights), {str(dtype).split('.')[-1]}, device {gpu}, "
        f"torch {torch.__version__}"
    )
    print(
        f"# clip 1 x 3 x {frames} x {size} x {size}; warm-up + up "
        f"to {args.repeats} repeats; budget {args.budget_s:.0f} s"
    )
    print(f"{'mode':<16} {'s/clip (median)':>16} {'min':>8} {'max':>8} {'repeats':>8} {'peak GiB':>9}  latent")
    modes = [("plain", False), ("tiling+slicing", True)]
    for mode, tiled in modes:
        if time.time() > deadline:
            print(f"{mode:<16} skipped: time budget spent")
            continue
        if tiled:
            vae.enable_tiling()
            vae.enable_slicing()
        try:
            times, peak, shape = time_encode(vae, video, args.repeats, deadline)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{mode:<16} out of memory: {str(exc).splitlines()[0]}")
            continue
        if not times:
            print(f"{mode:<16} warm-up only (time budget spent)")
            continue
        print(
            f"{mode:<16} {statistics.median(times):>16.3f} {min(times):>8.3f} {max(times):>8.3f} {len(times):>8d} "
            f"{peak:>9.2f}  {list(shape)}"
        )
    print(f"# total wall {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
