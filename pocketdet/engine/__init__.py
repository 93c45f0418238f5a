"""Training loop, COCO evaluation, checkpoints."""
