"""Run the CAM engine over a loader and turn its batches into per-image records for the shard writer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.cams.engine import compute_cams
from pipeline.cams.store import TARGET_KINDS, CamRecord


def iter_cam_records(
    model: nn.Module,
    loader: DataLoader,
    image_ids: Sequence[str],
    *,
    targets: Sequence[str] = ("gt",),
    amp: bool = False,
) -> Iterator[CamRecord]:
    """Yield one CamRecord per image, in loader order (the loader must not shuffle).

    `targets`: "gt" (maps for the ground-truth class, the official protocol) and optionally "pred" (maps
    for the softmax branch's top-1 prediction, from the same trunk forward). The maps' variant axis holds
    the model's variants (`pipeline.cams.engine.model_variants`), in registry order.
    """
    unknown = [t for t in targets if t not in TARGET_KINDS]
    if unknown or not targets or targets[0] != "gt":
        raise ValueError(f"cams targets: {list(targets)} is not valid; use [gt] or [gt, pred]")
    model.eval()
    offset = 0
    for images, labels in tqdm(loader, desc="cams", unit="batch"):
        gt = compute_cams(model, images, labels, amp=amp, pred="pred" in targets)
        pred = gt.logits.argmax(1)
        parts = [torch.stack([gt.pos, gt.neg], dim=1)]  # (B, parts, branches, variants, h, w)
        if "pred" in targets:
            parts.append(torch.stack([gt.pred_pos, gt.pred_neg], dim=1))
        maps = torch.stack(parts, dim=1).cpu().numpy()
        labels = labels.to(gt.logits.device)
        own_soft = gt.logits.gather(1, labels[:, None])[:, 0].cpu().tolist()
        own_sig = gt.logits2.gather(1, labels[:, None])[:, 0].cpu().tolist()
        preds = pred.cpu().tolist()  # one device-to-host copy per batch, not one per image
        for i, label in enumerate(labels.cpu().tolist()):
            if offset + i >= len(image_ids):
                raise ValueError(f"the loader yields more images than the {len(image_ids)} image ids given")
            yield CamRecord(image_ids[offset + i], label, preds[i], own_soft[i], own_sig[i], maps[i])
        offset += len(labels)
    if offset != len(image_ids):
        raise ValueError(f"the loader yielded {offset} images for {len(image_ids)} image ids")
