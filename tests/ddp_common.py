"""Shared by the DDP test and its torchrun worker: a deterministic model and global batch."""
import torch

from pocketdet.models import MODEL_CLASSES


def make_model(arch: str = "ssdlite"):
    """SSDLite-Small, or PicoDet-XS (task-aligned assigner: its targets depend on the predictions, its loss on the
    global sum of soft targets)."""
    torch.manual_seed(0)
    m = MODEL_CLASSES[arch]({"ssdlite": "small", "picodet": "xs"}[arch], num_classes=3)
    m.train()
    for mod in m.modules():  # frozen BN: batch statistics would differ between 1x4 and 2x2 images
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    return m


def global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 320, 320, generator=g)
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 200.0, 250.0], [150.0, 10.0, 300.0, 120.0]][: 1 + i % 2]),
                "labels": torch.tensor([1, 2][: 1 + i % 2])} for i in range(4)]
    return images, targets
