"""Resumable, DDP-sharded training batches and per-sample seeded augmentation.

The training stream is the concatenation of per-epoch permutations (epoch e shuffled with seed + e).
Global batch i covers stream positions [i*G, (i+1)*G) for G = batch_size * world_size; rank r takes its
slice. Each sample's augmentation RNG is seeded from its stream position, so the images seen at iteration i
depend only on (seed, i): resuming at any iteration reproduces an uninterrupted run exactly, and a 2-process
run sees the same global batch as 1 process with twice the batch size.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DataError

log = logging.getLogger("pocketdet.data")


class StreamBatchSampler(Sampler):
    def __init__(self, num_images: int, batch_size: int, seed: int = 0, start_iter: int = 0,
                 max_iters: int | None = None, rank: int = 0, world_size: int = 1):
        if num_images <= 0:
            raise DataError("the training dataset is empty")
        self.n, self.bs, self.seed = num_images, batch_size, seed
        self.start, self.max_iters, self.rank, self.world = start_iter, max_iters, rank, world_size
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._perm_cache[epoch]

    def batch(self, it: int) -> list[tuple[int, int]]:
        g = self.bs * self.world
        first = it * g + self.rank * self.bs
        return [(pos, int(self._perm(pos // self.n)[pos % self.n])) for pos in range(first, first + self.bs)]

    def __iter__(self):
        it = self.start
        while self.max_iters is None or it < self.max_iters:
            yield self.batch(it)
            it += 1

    def __len__(self):
        return (self.max_iters - self.start) if self.max_iters is not None else 2**62


class SeededTransformDataset(Dataset):
    """Wraps a detection dataset; item (stream_pos, index) is transformed under RNG seed f(seed, stream_pos).

    An image that fails to decode mid-training is logged and replaced by the next image, rather than killing
    the epoch; the file is named in the warning.
    """

    def __init__(self, base, transform, seed: int = 0):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        pos, idx = key if isinstance(key, tuple) else (key, key)
        # Everything random about this sample — a wrapper's draws (mixup partner and weight) and the
        # transform — happens under the per-position seed, so resumed runs see the same images.
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (what the draws use): torch.manual_seed would also queue a seeding of
            # every lazily initialised accelerator RNG, which costs ~0.4 ms a sample and, without workers,
            # would reset the training process's CUDA RNG at every sample
            torch.default_generator.manual_seed((self.seed * 1_000_003 + pos) % (2**63 - 1))
            for attempt in range(len(self.base)):
                j = (idx + attempt) % len(self.base)
                try:
                    # wrappers that depend on the stream position (mixup switches off after N samples) get it
                    img, target = self.base[(pos, j)] if getattr(self.base, "stream_keys", False) else self.base[j]
                    if self.transform is not None:  # transforms that decode (PhotoFiles items) can fail too
                        img, target = self.transform(img, target)
                    break
                except DataError as e:
                    log.warning("skipping unreadable sample: %s", e)
            else:
                raise DataError("no readable image in the dataset")
        return img, target


def collate_detection(batch):
    """(list of float images 0..1, list of target dicts with plain tensors)."""
    images, targets = [], []
    for img, t in batch:
        images.append(img.as_subclass(torch.Tensor).float().div_(255.0))
        targets.append({k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in t.items()})
    return images, targets


def train_loader(dataset, transform, batch_size: int, seed: int, start_iter: int, max_iters: int,
                 num_workers: int, rank: int = 0, world_size: int = 1, collate_fn=collate_detection) -> DataLoader:
    sampler = StreamBatchSampler(len(dataset), batch_size, seed, start_iter, max_iters, rank, world_size)
    return DataLoader(SeededTransformDataset(dataset, transform, seed), batch_sampler=sampler,
                      num_workers=num_workers, collate_fn=collate_fn, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def eval_loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(SeededTransformDataset(dataset, None), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate_detection)
