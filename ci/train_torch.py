"""PyTorch CPU training of the reference U-Net on a data set on disk, for a fixed time
budget: the baseline that `unet-train --time` (candle, CPU) is compared with ("same
data, same time budget": end-to-end images/s and the validation Dice reached).

    target/release/unet-train demo-data --out kv --count 400
    RAYON_NUM_THREADS=2 target/release/unet-train --data kv --time 5m --image-size 128 --batch-size 8
    python ci/train_torch.py --data kv --time 5m --image-size 128 --batch-size 8 --threads 2

The network is `UNet(preset(name))` from `fixtures/generate.py`, the independent PyTorch
reference of the golden fixtures. Everything else follows `unet-train`'s defaults
(trainer/src/options.rs, cli.rs):

Same as unet-train:
- data: Kvasir-SEG (images/ + masks/) or Carvana (train/ + train_masks/, `_mask` stems)
  layout, pairs matched by stem and sorted; binary masks are gray (image crate's luma
  for colour masks) > 127.
- split and order: the --val-split 0.1 held out and each epoch's training order are the
  frames unet-train uses (ChaCha8 seeded as loader.rs/train/mod.rs do, rand 0.9's
  shuffle), so both train and validate on the same frames in the same batches.
- input: RGB in [0, 1], stretched to the image size with the shared antialiased
  triangle filter (unet_spec::resample, PIL's BILINEAR), normalised with the mean/std of
  the first 64 training images at full size (--normalize dataset).
- augmentation (augment.rs defaults): hflip 0.5, vflip 0.5, rotation U[-20, 20] degrees,
  elastic deformation with probability 0.5 (3x3 grid of N(0, 10 px) displacements,
  Catmull-Rom interpolated), one inverse map per pixel, bilinear for the image
  (edges replicated) and nearest from the full-size mask; contrast U[0.85, 1.15] and
  brightness U[-0.1, 0.1] around 0.5, clamped to [0, 1]. Validation: no augmentation.
- initialisation (UNet::new): He-normal convolution weights (fan-in, transposed convs
  fan-in = input channels), zero biases, BatchNorm scale 1 and shift 0.
- loss: BCE with logits + soft Dice (per image, smooth 1); AdamW lr 3e-3, betas
  (0.9, 0.999), eps 1e-8, decoupled weight decay 1e-4 on every parameter.
- schedule: linear warm-up (20 steps) into a cosine to min-lr 1e-5 over the planned
  steps; with --time the plan is re-laid after every step from the mean step time (data
  waits included) and the longest end-of-epoch pass, the warm-up is cut to a tenth of
  the plan, and training stops mid-epoch when the plan is done or the budget spent
  (train/budget.rs); the final validation is always run.
- metrics: validation after every epoch, BatchNorm in eval mode, Dice of sigmoid > 0.5
  per image (an empty prediction of an empty mask counts 1), averaged over images;
  the best epoch is the first with the highest Dice.

Not the same:
- randomness: augmentation draws come from NumPy (seeded per seed, epoch and sample),
  initial weights from torch.manual_seed: the same distributions, not the same numbers.
- JPEG decoding: PIL (libjpeg) instead of the image crate (zune-jpeg); pixel values can
  differ by a level or so, which moves the normalisation statistics in the 4th decimal.
- data loading: a torch DataLoader with --workers processes (persistent, 2 batches
  prefetched each), unet-train's --workers are threads (default 1, prefetch 2).
- end-of-epoch work: unet-train writes best/last model files, a checkpoint, metrics,
  curves.png and val_preview.png; here the best weights are only kept in memory (or
  saved once at the end with --out). Its time still enters the budget plan the same way.
- no gradient accumulation, mixed precision, resume or other losses/optimisers.

The end-to-end rate is training images over the seconds from set-up (split, statistics,
validation decoding) to the end of the last validation, as unet-train's final line counts.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # NumPy in the loader: one thread, as unet-train's

import argparse
import copy
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    sys.exit("train_torch.py needs Pillow to decode images: pip install pillow")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch_step import load_reference  # noqa: E402

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1

# ---------------------------------------------------------------------------
# unet-train's split and epoch order: rand_chacha 0.9 ChaCha8Rng::seed_from_u64 and
# rand 0.9's SliceRandom::shuffle, reproduced bit for bit.
# ---------------------------------------------------------------------------


def mix(z: int) -> int:
    """SplitMix64 finaliser (loader.rs `mix`)."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class ChaCha8:
    """`ChaCha8Rng::seed_from_u64` (rand_core 0.9 PCG32 seed fill), `next_u32` only."""

    def __init__(self, state: int):
        key = []
        for _ in range(8):
            state = (state * 6364136223846793005 + 11634580027462260723) & M64
            xorshifted = (((state >> 18) ^ state) >> 27) & M32
            rot = state >> 59
            key.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & M32)
        self.input = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *key, 0, 0, 0, 0]
        self.block, self.words = 0, []

    def _refill(self) -> None:
        s = self.input[:12] + [self.block & M32, self.block >> 32, 0, 0]
        x = s[:]

        def qr(a, b, c, d):
            x[a] = (x[a] + x[b]) & M32; x[d] ^= x[a]; x[d] = ((x[d] << 16) | (x[d] >> 16)) & M32  # noqa: E702
            x[c] = (x[c] + x[d]) & M32; x[b] ^= x[c]; x[b] = ((x[b] << 12) | (x[b] >> 20)) & M32  # noqa: E702
            x[a] = (x[a] + x[b]) & M32; x[d] ^= x[a]; x[d] = ((x[d] << 8) | (x[d] >> 24)) & M32  # noqa: E702
            x[c] = (x[c] + x[d]) & M32; x[b] ^= x[c]; x[b] = ((x[b] << 7) | (x[b] >> 25)) & M32  # noqa: E702

        for _ in range(4):  # 8 rounds
            qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)  # noqa: E702
            qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)  # noqa: E702
        self.words = [(a + b) & M32 for a, b in zip(x, s)]
        self.block += 1

    def next_u32(self) -> int:
        if not self.words:
            self._refill()
        return self.words.pop(0)

    def below(self, bound: int) -> int:
        """`random_range(..bound)` for u32 (Canon's method, rand 0.9 without `unbiased`)."""
        m = self.next_u32() * bound
        result, lo = m >> 32, m & M32
        if lo > (-bound) & M32:
            hi = (self.next_u32() * bound) >> 32
            result += (lo + hi) > M32
        return result


def shuffle(items: list, rng: ChaCha8) -> list:
    """rand 0.9 `shuffle`: Fisher-Yates with `IncreasingUniform` index chunks."""
    items = list(items)
    if len(items) <= 1:
        return items
    n, chunk, remaining = 0, 0, 1  # IncreasingUniform::new(rng, 0)
    for i in range(len(items)):
        nn_ = n + 1
        if remaining == 0:
            bound, count = nn_, 1
            while bound * (nn_ + count) <= M32:
                bound *= nn_ + count
                count += 1
            chunk, remaining = rng.below(bound), count
        remaining -= 1
        if remaining == 0:
            j = chunk
        else:
            j, chunk = chunk % nn_, chunk // nn_
        n = nn_
        items[i], items[j] = items[j], items[i]
    return items


def epoch_order(indices: list[int], seed: int, epoch: int) -> list[int]:
    return shuffle(indices, ChaCha8(mix(seed ^ 0x5EED) ^ mix(epoch)))


def split(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    order = epoch_order(list(range(n)), seed ^ 0x5B117000, M64)
    n_val = max(math.floor(n * val_split + 0.5), int(val_split > 0))
    if n_val >= n:
        sys.exit(f"{n} sample(s) leave none for training with --val-split {val_split}")
    return sorted(order[n_val:]), sorted(order[:n_val])


# ---------------------------------------------------------------------------
# Data (data.rs) and preprocessing/augmentation (augment.rs).
# ---------------------------------------------------------------------------

EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff"}


def find_pairs(data: Path) -> list[tuple[str, Path, Path]]:
    if (data / "images").is_dir() and (data / "masks").is_dir():
        images, masks, strip = data / "images", data / "masks", False
    elif (data / "train").is_dir() and (data / "train_masks").is_dir():
        images, masks, strip = data / "train", data / "train_masks", True
    else:
        sys.exit(f"{data}: neither images/ + masks/ (Kvasir-SEG) nor train/ + train_masks/ (Carvana)")

    def listing(d: Path) -> dict[str, Path]:
        return {
            p.stem: p for p in d.iterdir()
            if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".") and p.is_file()
        }

    imgs = listing(images)
    msks = {}
    for stem, p in listing(masks).items():
        key = stem[: -len("_mask")] if strip and stem.endswith("_mask") and stem not in imgs else stem
        msks[key] = p
    missing = sorted(set(imgs) ^ set(msks))
    if missing:
        sys.exit(f"unmatched image/mask stems: {', '.join(missing[:10])}")
    return [(s, imgs[s], msks[s]) for s in sorted(imgs)]


def load_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """`[3, H, W]` float32 in [0, 1] and `[H, W]` uint8 0/1 (gray > 127)."""
    with Image.open(image) as im:
        img = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    with Image.open(mask) as m:
        if m.mode == "L":
            gray = np.asarray(m)
        else:  # the image crate's Rgb -> Luma: (2126 r + 7152 g + 722 b) / 10000
            rgb = np.asarray(m.convert("RGB"), dtype=np.uint32)
            gray = (rgb[..., 0] * 2126 + rgb[..., 1] * 7152 + rgb[..., 2] * 722) // 10000
    if gray.shape != img.shape[1:]:
        sys.exit(f"{mask}: mask is {gray.shape[::-1]}, image is {img.shape[:0:-1]}")
    return np.ascontiguousarray(img), (gray > 127).astype(np.uint8)


_TAPS: dict[tuple[int, int], np.ndarray] = {}


def taps(inp: int, out: int) -> np.ndarray:
    """`[out, inp]` weights of unet_spec::resample's triangle filter (PIL's BILINEAR)."""
    if (inp, out) not in _TAPS:
        w = np.zeros((out, inp), dtype=np.float64)
        scale = inp / out
        support = max(scale, 1.0)
        for o in range(out):
            centre = (o + 0.5) * scale
            lo = min(max(math.floor(centre - support + 0.5), 0), inp - 1)
            hi = min(max(math.floor(centre + support + 0.5), lo + 1), inp)
            i = np.arange(lo, hi)
            raw = np.maximum(1.0 - np.abs((i - centre + 0.5) / support), 0.0)
            w[o, lo:hi] = raw / raw.sum()
        _TAPS[inp, out] = w.astype(np.float32)
    return _TAPS[inp, out]


def cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    t2, t3 = t * t, t * t * t
    return [0.5 * (-t3 + 2 * t2 - t), 0.5 * (3 * t3 - 5 * t2 + 2), 0.5 * (-3 * t3 + 4 * t2 + t), 0.5 * (t3 - t2)]


def grid_matrix(g: np.ndarray) -> np.ndarray:
    """`[len(g), 3]` Catmull-Rom weights of the 3 grid nodes at coordinates `g` in [0, 2]."""
    i = np.minimum(np.floor(g), 1)
    w = cubic_weights((g - i).astype(np.float32))
    m = np.zeros((len(g), 3), dtype=np.float32)
    for k in range(4):
        node = np.clip(i + k - 1, 0, 2).astype(int)
        np.add.at(m, (np.arange(len(g)), node), w[k])
    return m


def prepare(img, mask, size, aug, rng, mean, std):
    """augment.rs `prepare`: resize, (augment), normalise. Returns `[3, S, S]`, `[S, S]`."""
    c, sh, sw = img.shape
    w = h = size
    resized = np.einsum("oh,chw,pw->cop", taps(sh, h), img, taps(sw, w), optimize=True)
    px, py = np.meshgrid(np.arange(w, dtype=np.float32) + 0.5, np.arange(h, dtype=np.float32) + 0.5)
    gain, offset = 1.0, 0.0
    if aug:
        hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
        angle = math.radians(rng.uniform(-20.0, 20.0))
        grid = rng.standard_normal((3, 3, 2)).astype(np.float32) * 10.0 if rng.random() < 0.5 else None
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.1, 0.1)
        if grid is not None:  # displacement at grid coordinates 2 * p / size
            wx = grid_matrix(np.clip(px[0] / w * 2, 0, 2))
            wy = grid_matrix(np.clip(py[:, 0] / h * 2, 0, 2))
            px = px + wy @ grid[:, :, 0] @ wx.T
            py = py + wy @ grid[:, :, 1] @ wx.T
        s, co = math.sin(angle), math.cos(angle)
        dx, dy = px - w / 2, py - h / 2
        px, py = w / 2 + co * dx - s * dy, h / 2 + s * dx + co * dy
        if hflip:
            px = w - px
        if vflip:
            py = h - py
        fx, fy = np.clip(px - 0.5, 0, w - 1), np.clip(py - 0.5, 0, h - 1)
        x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        ax, ay = fx - x0, fy - y0
        top = resized[:, y0, x0] * (1 - ax) + resized[:, y0, x1] * ax
        bottom = resized[:, y1, x0] * (1 - ax) + resized[:, y1, x1] * ax
        resized = top * (1 - ay) + bottom * ay
    # The mask: nearest full-size pixel under the same continuous map.
    mx = np.minimum(np.floor(np.maximum(px * sw / w, 0)).astype(int), sw - 1)
    my = np.minimum(np.floor(np.maximum(py * sh / h, 0)).astype(int), sh - 1)
    out_mask = mask[my, mx]
    if gain != 1.0 or offset != 0.0:
        resized = np.clip((resized - 0.5) * gain + 0.5 + offset, 0.0, 1.0)
    resized = (resized - mean[:, None, None]) / std[:, None, None]
    return resized.astype(np.float32), out_mask


class Samples(torch.utils.data.Dataset):
    """Item `(epoch, index)`: that sample decoded and prepared; augmentation randomness
    from (seed, epoch, index) alone, so it does not depend on the worker."""

    def __init__(self, pairs, size, augment, seed, mean, std):
        self.pairs, self.size, self.augment, self.seed = pairs, size, augment, seed
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        epoch, i = key
        img, mask = load_pair(*self.pairs[i][1:])
        rng = np.random.default_rng([self.seed, epoch, i]) if self.augment else None
        x, m = prepare(img, mask, self.size, self.augment, rng, self.mean, self.std)
        return torch.from_numpy(x), torch.from_numpy(m[None].astype(np.float32))


class EpochBatches(torch.utils.data.Sampler):
    """unet-train's batches of the epoch set in `.epoch`: its order, cut into batches."""

    def __init__(self, train_idx, batch, seed):
        self.train_idx, self.batch, self.seed, self.epoch = train_idx, batch, seed, 0

    def __len__(self):
        return -(-len(self.train_idx) // self.batch)

    def __iter__(self):
        order = epoch_order(self.train_idx, self.seed, self.epoch)
        for k in range(0, len(order), self.batch):
            yield [(self.epoch, i) for i in order[k : k + self.batch]]


def channel_stats(pairs, train_idx):
    """Mean/std per channel of the first 64 training images at full size (data.rs)."""
    total, sq, n = np.zeros(3), np.zeros(3), 0
    for i in train_idx[:64]:
        img = load_pair(*pairs[i][1:])[0].astype(np.float64)
        total += img.sum(axis=(1, 2))
        sq += (img * img).sum(axis=(1, 2))
        n += img.shape[1] * img.shape[2]
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


# ---------------------------------------------------------------------------
# Model, loss, metrics, schedule and time budget.
# ---------------------------------------------------------------------------


def he_normal_(model: nn.Module) -> None:
    """UNet::new: He-normal conv weights (fan-in), zero biases, BN scale 1 / shift 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            cin = m.in_channels
            fan_in = cin * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else cin
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def bce_dice(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter, card = (p * t).sum((2, 3)), p.sum((2, 3)) + t.sum((2, 3))
    dice = 1 - ((2 * inter + 1) / (card + 1)).mean()
    return F.binary_cross_entropy_with_logits(logits, t) + dice


def lr_at(step, base, min_lr, warmup, total):
    lr = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    return lr * (step + 1) / warmup if step < warmup else lr


def steps_that_fit(remaining, per_step, epoch_end, left_in_epoch, spe):
    """train/budget.rs `steps_that_fit`."""
    left = remaining - epoch_end
    if left <= 0 or per_step <= 0:
        return 0
    n, to_boundary = 0, min(max(left_in_epoch, 1), max(spe, 1))
    while True:
        whole = to_boundary * per_step
        if whole > left:
            return n + math.floor(left / per_step)
        left -= whole
        n += to_boundary
        if left <= epoch_end:
            return n
        left -= epoch_end
        to_boundary = max(spe, 1)


@torch.no_grad()
def validate(model, val_batches):
    model.eval()
    dices, loss_sum, n = [], 0.0, 0
    for x, t in val_batches:
        logits = model(x)
        loss_sum += bce_dice(logits, t).item() * len(x)
        n += len(x)
        pred = logits > 0.0  # sigmoid > 0.5
        truth = t > 0.5
        tp = (pred & truth).sum((1, 2, 3)).double()
        wrong = (pred ^ truth).sum((1, 2, 3)).double()  # fp + fn
        denom = 2 * tp + wrong
        dices.append(torch.where(denom == 0, torch.ones_like(tp), 2 * tp / denom.clamp(min=1)))
    model.train()
    return loss_sum / max(n, 1), torch.cat(dices).mean().item()


def parse_duration(s: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", s.strip())
    if not parts or re.sub(r"[\d.\s]|ms|h|m|s", "", s):
        raise argparse.ArgumentTypeError(f"bad duration `{s}` (expected e.g. 90s, 5m, 1h30m)")
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "": 1}
    return sum(float(v) * unit[u] for v, u in parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="Kvasir-SEG or Carvana layout folder")
    p.add_argument("--time", type=parse_duration, help="time budget (20s, 5m, 1h30m); else --epochs")
    p.add_argument("--epochs", type=int, default=40, help="epochs (with --time: only the first plan)")
    p.add_argument("--model", default="unet-16")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (0 = in process)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--out", type=Path, help="save the best weights here (state_dict .pt)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    pairs = find_pairs(args.data)
    started = time.perf_counter()
    train_idx, val_idx = split(len(pairs), args.val_split, args.seed)
    mean, std = channel_stats(pairs, train_idx)
    torch.manual_seed(args.seed)
    ref = load_reference()
    cfg = ref.preset(args.model)
    if (cfg["in_channels"], cfg["out_channels"]) != (3, 1):
        sys.exit(f"{args.model}: only RGB in, one binary class out is supported")
    model = ref.UNet(cfg).train()
    he_normal_(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=args.weight_decay)
    val_set = Samples(pairs, args.image_size, False, args.seed, mean, std)
    val_batches = []
    for k in range(0, len(val_idx), args.batch_size):
        items = [val_set[(0, i)] for i in val_idx[k : k + args.batch_size]]
        val_batches.append((torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])))
    sampler = EpochBatches(train_idx, args.batch_size, args.seed)
    loader = torch.utils.data.DataLoader(
        Samples(pairs, args.image_size, not args.no_augment, args.seed, mean, std),
        batch_sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0,
        **({"prefetch_factor": 2} if args.workers > 0 else {}),
    )
    spe = len(sampler)
    total_steps, warmup = args.epochs * spe, args.warmup_steps
    print(
        f"train_torch: pytorch {torch.__version__}, {args.model} "
        f"({sum(q.numel() for q in model.parameters())} parameters), {len(train_idx)} train / "
        f"{len(val_idx)} val samples at {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{spe} steps/epoch, {args.threads} thread(s), {args.workers} loader worker(s); "
        f"mean {' '.join(f'{v:.4f}' for v in mean)} std {' '.join(f'{v:.4f}' for v in std)}",
        flush=True,
    )
    # train/budget.rs TimeBudget: starts once set up, as unet-train's.
    budget_start = time.perf_counter()
    step_time, timed_steps, epoch_end = 0.0, 0, 0.0

    def spent():
        return time.perf_counter() - budget_start

    def plan_spent():
        return args.time is not None and (spent() >= args.time or step >= total_steps)

    step = epoch = images_total = 0
    best, best_epoch, best_state = -math.inf, 0, None
    while epoch < (max(-(-total_steps // spe), epoch + 1) if args.time else args.epochs):
        sampler.epoch = epoch
        t0 = time.perf_counter()
        images = batches = 0
        loss_sum = 0.0
        out_of_time = False
        since = time.perf_counter()
        for x, t in loader:
            lr = lr_at(step, args.lr, args.min_lr, warmup, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = bce_dice(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step, batches, images = step + 1, batches + 1, images + len(x)
            if args.time is not None:
                now = time.perf_counter()
                step_time, timed_steps, since = step_time + now - since, timed_steps + 1, now
                remaining = max(args.time - spent(), 0.0)
                total_steps = max(step + steps_that_fit(remaining, step_time / timed_steps, epoch_end,
                                                        spe - batches, spe), step)
                warmup = min(warmup, total_steps // 10)
                if plan_spent() and batches < spe:
                    out_of_time = True
                    print(f"time budget: stopping at step {step} in epoch {epoch + 1} after {spent():.1f}s")
                    break
        train_seconds = time.perf_counter() - t0
        images_total += images
        work = time.perf_counter()
        val_loss, dice = validate(model, val_batches)
        epoch += 1
        if dice > best:
            best, best_epoch, best_state = dice, epoch, copy.deepcopy(model.state_dict())
        epoch_end = max(epoch_end, time.perf_counter() - work)
        print(
            f"epoch {epoch:>3}  steps {step:>5}  lr {lr_at(max(step - 1, 0), args.lr, args.min_lr, warmup, total_steps):.2e}  "
            f"train loss {loss_sum / max(batches, 1):.4f}  val loss {val_loss:.4f}  dice {dice:.4f}  "
            f"{images / max(train_seconds, 1e-9):.1f} img/s  {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        if out_of_time or plan_spent():
            break
    seconds = time.perf_counter() - started
    if args.out is not None and best_state is not None:
        torch.save(best_state, args.out)
    print(
        f"train_torch: {step} steps in {seconds:.1f} s: {images_total / seconds:.1f} images/s end to end; "
        f"best val Dice {best:.4f} (epoch {best_epoch})"
    )


if __name__ == "__main__":
    main()
