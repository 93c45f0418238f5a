"""PP-PicoDet specifics of the Paddle converter (`paddle.convert_paddle` calls these for arch "picodet").

pocketdet's PicoDet carries Paddle's dygraph names, so conversion is the usual rename of BN statistics, with
one wrinkle: ppdet's PicoHeadV2 registers each class and box conv twice, as `head.head_cls{i}` (add_sublayer)
and as `head.head_cls_list.{i}` (the LayerList it also appends to), so `paddle.save(model.state_dict())`
writes every one of those tensors under both names. pocketdet keeps the list; the alias must hold the same
values and is then dropped (if a file only has the alias, its values are used).
"""
from __future__ import annotations

import re

import numpy as np

from .common import ConversionReport, WeightConversionError

HEAD_ALIAS = re.compile(r"^head\.head_(cls|reg)(\d+)\.(weight|bias)$")


def fold_head_aliases(params: dict[str, np.ndarray], report: ConversionReport, source: str) -> dict[str, np.ndarray]:
    """Drop `head.head_{cls,reg}{i}.*` after checking they equal `head.head_{cls,reg}_list.{i}.*`."""
    out = {k: v for k, v in params.items() if not HEAD_ALIAS.match(k)}
    differ = []
    for k, v in params.items():
        m = HEAD_ALIAS.match(k)
        if not m:
            continue
        listed = f"head.head_{m[1]}_list.{m[2]}.{m[3]}"
        if listed not in params:
            out[listed] = v
            report.transformed[listed] = f"read from its alias {k}"
        elif params[listed].shape != v.shape or not np.array_equal(params[listed], v):
            differ.append(k)
        else:
            report.ignored[k] = f"alias of {listed} (PicoHeadV2 registers the conv twice)"
    if differ:
        raise WeightConversionError(f"{source}: cannot convert: {len(differ)} PicoHeadV2 alias key(s) hold other "
                                    f"values than their head_*_list twin: {', '.join(sorted(differ))}")
    return out


def picodet_class_count(tensors: dict[str, np.ndarray]) -> int | None:
    w = tensors.get("head.head_cls_list.0.weight")
    return None if w is None else int(w.shape[0])
