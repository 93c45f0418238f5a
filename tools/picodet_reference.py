"""PaddleDetection 2.6 PP-PicoDet reference (run with `.venv-paddle/bin/python`).

Builds ppdet's own PicoDet (LCNet + LCPAN + PicoHeadV2) with the constructor arguments of
configs/picodet/*_coco_lcnet.yml at v2.6.0 (no YAML parsing: the values are spelled out in `VARIANTS`).

    .venv-paddle/bin/python tools/picodet_reference.py params [--out tests/fixtures]
        writes picodet_{xs,s,m,l}_params.tsv: every state-dict tensor (name, shape,
        learnable|fixed: BN statistics and the integral's projection are fixed) and prints
        the learnable parameter counts (tensors with stop_gradient False)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# configs/picodet/picodet_{v}_*_coco_lcnet.yml at v2.6.0 over _base_/picodet_v2.yml
VARIANTS = {
    "xs": dict(scale=0.35, channels=96, num_convs=2),
    "s": dict(scale=0.75, channels=96, num_convs=2),
    "m": dict(scale=1.5, channels=128, num_convs=4),
    "l": dict(scale=2.0, channels=160, num_convs=4),
}


def build(variant: str, input_size: int = 320):
    """ppdet's PicoDet architecture object, in eval mode, with ppdet's own initialisation."""
    from ppdet.modeling.architectures.picodet import PicoDet
    from ppdet.modeling.backbones.lcnet import LCNet
    from ppdet.modeling.heads.pico_head import PicoFeat, PicoHeadV2
    from ppdet.modeling.layers import MultiClassNMS
    from ppdet.modeling.losses import GIoULoss
    from ppdet.modeling.losses.gfocal_loss import DistributionFocalLoss
    from ppdet.modeling.losses.varifocal_loss import VarifocalLoss
    from ppdet.modeling.necks.lc_pan import LCPAN

    v = VARIANTS[variant]
    c = v["channels"]
    backbone = LCNet(scale=v["scale"], feature_maps=[3, 4, 5])
    neck = LCPAN(in_channels=backbone._out_channels, out_channels=c, use_depthwise=True, num_features=4,
                 spatial_scales=[0.125, 0.0625, 0.03125])  # fresh list: ppdet's default list is mutated
    feat = PicoFeat(feat_in=c, feat_out=c, num_convs=v["num_convs"], num_fpn_stride=4, norm_type="bn",
                    share_cls_reg=True, use_se=True)
    head = PicoHeadV2(conv_feat=feat, num_classes=80, fpn_stride=[8, 16, 32, 64], prior_prob=0.01,
                      reg_max=7, feat_in_chan=c, cell_offset=0.5, grid_cell_scale=5.0, use_align_head=True,
                      static_assigner_epoch=100, static_assigner=None, assigner=None,
                      loss_class=VarifocalLoss(use_sigmoid=False, iou_weighted=True, loss_weight=1.0),
                      loss_dfl=DistributionFocalLoss(loss_weight=0.5), loss_bbox=GIoULoss(loss_weight=2.5),
                      nms=MultiClassNMS(nms_top_k=1000, keep_top_k=100, score_threshold=0.025,
                                        nms_threshold=0.6),
                      eval_size=[input_size, input_size])
    model = PicoDet(backbone, neck, head)
    model.eval()
    return model


def write_params(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        model = build(variant)
        learn = {id(p) for p in model.parameters() if not p.stop_gradient}
        rows = [f"{k}\t{list(t.shape)}\t{'learnable' if id(t) in learn else 'fixed'}"
                for k, t in model.state_dict().items()]
        learnable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
        path = out / f"picodet_{variant}_params.tsv"
        path.write_text("\n".join(rows) + "\n")
        print(f"picodet_{variant}: {learnable:,} learnable parameters, {len(rows)} state-dict tensors -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("params", help="state-dict name/shape TSVs of the four sizes")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = ap.parse_args()
    import paddle

    paddle.set_device("cpu")
    if args.cmd == "params":
        write_params(args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
