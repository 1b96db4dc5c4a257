"""One-pass CAM engine: every CAM variant of the model's family, for both heads, from one trunk forward.

`compute_cams(model, images, targets)` runs the trunk once without autograd, giving the float32 target-layer
feature map A (B, C, h, w). Each head is a module on A (`pipeline.models.heads.Head`: in eval mode
`model.head(A)` / `model.head2(A)` are the model's logits), so the gradient g = dS/dA of each branch's raw
target logit S (pre-softmax for the softmax head, pre-sigmoid for the sigmoid head; per-sample scores summed
over the batch, as pytorch-grad-cam's `ClassifierOutputTarget` does) is taken through the head module itself:
pooling, MLP, dropout (the identity in eval mode). For an MLP head g varies over the map. A is a detached
leaf, so no gradient ever reaches the trunk's (or the heads') parameters.

Fast path: a head that is exactly GAP -> linear (`head.gap_linear()`) has dS/dA_c = W[k, c] / hw, constant
over the map, so no autograd is run at all and every variant's weights come in closed form from W[k] and
sum_xy A (`pipeline.cams.variants.CamInputs`). A head that is tail(adaptive_avg_pool2d(A, grid))
(`head.pooled()`, the gradient family's `PoolMlpHead`) is differentiated through its tail alone, on the
(B, C, grid, grid) pooled map; the pooling's transpose then gives dS/dA, which is constant on the cells where
the same windows overlap (`pool_cells`), so the variants' reductions run per cell (P cells, P <= (2 grid)^2,
against hw pixels) instead of per pixel. `fast_path=False` forces autograd through the whole head (the tests
check that all paths agree).

The variants and their formulas are the registry's (`pipeline.cams.variants`); the model's family (its
`spec.family`, "cam" when absent) decides which exist: CAM only for the CAM family, as the official code.
Each map is returned split by the sign of the weights: pos = sum_c max(w_c, 0) A_c and neg = sum_c
min(w_c, 0) A_c, so the raw signed map is pos + neg and the official "negative weight clamp" of the sigmoid
branch (METHOD.md 3.1, 8.2) is pos alone; neg = 0 for variants whose weights are non-negative by
construction. The maps are raw: no ReLU, clamp, upsampling or normalisation here; those are evaluation-time
options (`pipeline.cams.postprocess`), so changing them never recomputes maps. All channel-weight variants
(and LayerCAM on the fast path, where its pixel weights are constant) are combined with A in one batched
matrix product.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cams import variants as registry
from pipeline.cams.variants import CamInputs, CamVariant
from pipeline.concepts import BRANCHES  # re-exported: callers import it from here
from pipeline.models.heads import Head

CHUNK_ELEMENTS = 1 << 18  # elements of one (images x C x hw) gradient chunk in `_chunked_maps` (1 MiB)
VARIANTS = registry.names()  # every registered variant (the CAM family's list); a model's own: model_variants


@dataclass
class CamBatch:
    """Logits of both heads and the raw maps of every (branch, variant), at feature-map resolution."""

    logits: torch.Tensor  # (B, K) float32, softmax branch
    logits2: torch.Tensor  # (B, K) float32, sigmoid branch (pre-sigmoid)
    pos: torch.Tensor  # (B, 2, V, h, w) float32: [branch, variant] map from the non-negative weights
    neg: torch.Tensor  # (B, 2, V, h, w) float32: map from the negative weights (<= 0 where A >= 0)
    variants: tuple[str, ...] = VARIANTS  # names of the V variants, in registry order
    pred_pos: torch.Tensor | None = None  # the same for the softmax branch's top-1 prediction (`pred=True`)
    pred_neg: torch.Tensor | None = None


def model_family(model: nn.Module) -> str:
    """The model's family, "cam" or "grad" (`model.spec.family`; "cam" when the spec has none)."""
    return registry.check_family(getattr(getattr(model, "spec", None), "family", registry.DEFAULT_FAMILY))


def model_variants(model: nn.Module) -> tuple[CamVariant, ...]:
    """The CAM variants defined for `model` (its family's), in registry order."""
    return registry.for_family(model_family(model))


def gap_linear(head: nn.Module) -> nn.Linear | None:
    """The linear layer of a head that is exactly GAP -> linear in eval mode, else None.

    A `Head` says so itself; a bare `nn.Linear` (the head of older `DualBranchNet`s, applied to the pooled
    vector) is read as GAP -> that linear layer.
    """
    if isinstance(head, Head):
        return head.gap_linear()
    if type(head) is nn.Linear:
        return head
    return None


def gap_linear_heads(model: nn.Module) -> bool:
    """Both branches' heads are exactly GAP -> linear (the closed form; `variants.map_source` aliases)."""
    return all(gap_linear(h) is not None for h in (model.head, model.head2))


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The head's logits from the feature map (B, C, h, w)."""
    if isinstance(head, Head):
        return head(features)
    if type(head) is nn.Linear:
        return head(features.mean(dim=(2, 3)))
    raise TypeError(f"head: {type(head).__name__} is neither a pipeline.models.heads.Head nor an nn.Linear")


def check_eval_mode(model: nn.Module) -> None:
    """Raise ValueError unless every module of `model` is in eval mode and the sigmoid head exists.

    Eval mode makes the maps batch-invariant (BatchNorm running statistics) and makes dropout the identity,
    so the heads read exactly the map A.
    """
    if getattr(model, "head2", None) is None:
        raise ValueError("the model has no sigmoid head; run the clone_head stage first")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"compute_cams needs the model in eval mode; in train mode: {', '.join(training[:5])}")


def head_gradients(
    model: nn.Module, features: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run both heads on the feature map A and differentiate the target logits with respect to A.

    S_h = sum_b logits_h[b, targets[b]] for h in (softmax, sigmoid), through the head modules themselves;
    returns (logits, logits2, g) with g = stack_h dS_h/dA of shape (B, 2, C, h, w), all float32 and detached.
    Only A is differentiated: the trunk is not in the graph and no parameter receives a gradient.
    """
    logits, logits2, grads = _autograd_heads(model, features, lambda _: [targets])
    return logits, logits2, torch.stack(grads[0], dim=1)


def _autograd_heads(
    model: nn.Module, features: torch.Tensor, kinds, tails=None
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """One forward of both heads on A (as detached leaves), then one backward per target tensor of
    `kinds(logits)` (so a target may depend on the softmax logits, e.g. the prediction). With `tails` (one
    function per head) `features` is the pooled map and the heads' tails are run and differentiated instead."""
    with torch.enable_grad():
        leaves = [features.detach().float().requires_grad_(True) for _ in BRANCHES]
        if tails is None:
            tails = [lambda a, head=head: head_logits(head, a) for head in (model.head, model.head2)]
        outs = [tail(a) for tail, a in zip(tails, leaves)]
        targets = kinds(outs[0].detach())
        grads = []
        for i, t in enumerate(targets):
            index = t.view(-1, 1)
            score = sum(out.gather(1, index).sum() for out in outs)
            grads.append(torch.autograd.grad(score, leaves, retain_graph=i < len(targets) - 1))
    return outs[0].detach(), outs[1].detach(), grads  # grads[kind] = (dS_softmax/dA, dS_sigmoid/dA)


def pooled_heads(model: nn.Module) -> tuple[int, list] | None:
    """(grid, tails) when both heads are tail(adaptive_avg_pool2d(A, grid)) with one grid (`Head.pooled`)."""
    forms = [h.pooled() if isinstance(h, Head) else None for h in (model.head, model.head2)]
    if any(f is None for f in forms) or forms[0][0] != forms[1][0]:
        return None
    return forms[0][0], [tail for _, tail in forms]


@functools.lru_cache(maxsize=32)
def pool_cells(height: int, width: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cells of adaptive average pooling from (height, width) to (grid, grid), on the CPU.

    The pooling is linear: pooled_r = sum_x P[x, r] A(x), P[x, r] = 1 / |window r| for x in window r; so
    dS/dA(x) = sum_r P[x, r] dS/dpooled_r, which is the same for every pixel with the same row of P (the same
    set of windows: adaptive windows may overlap). P is read from the pooling itself (one-hot maps through
    `F.adaptive_avg_pool2d`), so the cells follow PyTorch's window bounds exactly. Returns `to_cells` (R, P),
    the value of P's row at each cell, `index` (hw,) each pixel's cell, and `one_hot` (hw, P).
    """
    n = height * width
    weights = F.adaptive_avg_pool2d(torch.eye(n).reshape(n, 1, height, width), grid).reshape(n, grid * grid)
    rows, index = torch.unique(weights, dim=0, return_inverse=True)
    return rows.T.contiguous(), index, F.one_hot(index, len(rows)).float()


def _maps(variants: tuple[CamVariant, ...], inputs: CamInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """pos, neg (B, H, V, hw) of `variants` from their weights on `inputs` (see the module docstring)."""
    a = inputs.features  # (B, C, N)
    batch, channels, n = a.shape
    heads = inputs.grads.shape[1]
    combined: list[tuple[int, torch.Tensor, bool]] = []  # (variant index, (B, H, C) weights, nonnegative)
    pixel: list[tuple[int, torch.Tensor, bool]] = []
    cellwise: list[tuple[int, torch.Tensor, bool]] = []
    for i, v in enumerate(variants):
        w = v.weights(inputs)
        if v.kind == "pixel" and inputs.constant_grad and w.shape[-1] == 1:
            combined.append((i, w[..., 0], v.nonnegative))
        elif v.kind == "pixel":
            (cellwise if inputs.cells is not None else pixel).append((i, w, v.nonnegative))
        else:
            combined.append((i, w, v.nonnegative))
    pos = a.new_empty(batch, heads, len(variants), n)  # every variant writes its pos part
    neg = a.new_zeros(batch, heads, len(variants), n)  # zero for the non-negative ones
    if combined:
        rows = [w.clamp(min=0) for _, w, _ in combined] + [w.clamp(max=0) for _, w, nn_ in combined if not nn_]
        out = torch.bmm(torch.stack(rows, dim=2).reshape(batch, -1, channels), a).reshape(batch, heads, -1, n)
        signed = [i for i, _, nn_ in combined if not nn_]
        pos[:, :, [i for i, _, _ in combined]] = out[:, :, : len(combined)]
        if signed:
            neg[:, :, signed] = out[:, :, len(combined) :]
    for i, w, nonneg in pixel:
        pos[:, :, i] = ((w if nonneg else w.clamp(min=0)) * a[:, None]).sum(dim=2)
        if not nonneg:
            neg[:, :, i] = (w.clamp(max=0) * a[:, None]).sum(dim=2)
    if cellwise:
        # per-cell pixel weights (B, H, C, P): every cell's weights applied to the whole map in one product,
        # then each pixel keeps its own cell's row
        index = inputs.cells.index.view(1, 1, 1, n).expand(batch, heads, 1, n)
        for i, w, nonneg in cellwise:
            parts = [(pos, w if nonneg else w.clamp(min=0))] + ([] if nonneg else [(neg, w.clamp(max=0))])
            for out, part in parts:
                cells = part.shape[-1]
                per_cell = torch.bmm(part.transpose(2, 3).reshape(batch, heads * cells, channels), a)
                out[:, :, i] = per_cell.view(batch, heads, cells, n).gather(2, index)[:, :, 0]
    return pos, neg


def _chunked_maps(
    variants: tuple[CamVariant, ...],
    flat: torch.Tensor,
    sum_a: torch.Tensor,
    grads: tuple[torch.Tensor, ...],
    rows: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_maps` for full gradients (one (B, C, h, w) tensor per head), one head and a few images at a time, so
    that the variants' elementwise intermediates stay small (in cache) instead of (B, 2, C, h, w) arrays."""
    batch, channels, n = flat.shape
    pos = flat.new_empty(batch, len(grads), len(variants), n)
    neg = torch.empty_like(pos)
    step = max(1, CHUNK_ELEMENTS // (channels * n))
    for start in range(0, batch, step):
        part = slice(start, start + step)
        for h, g in enumerate(grads):
            inputs = CamInputs(
                flat[part],
                sum_a[part],
                g[part].reshape(-1, 1, channels, n),
                constant_grad=False,
                head_rows=rows[part, h : h + 1] if rows is not None else None,
            )
            pos[part, h : h + 1], neg[part, h : h + 1] = _maps(variants, inputs)
    return pos, neg


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    amp: bool = False,
    pred: bool = False,
    fast_path: bool = True,
) -> CamBatch:
    """Raw signed maps of the model's CAM variants for both heads and each image's target class.

    One no-grad trunk forward on the model's device gives A (B, C, h, w); the heads' gradients (closed form
    for GAP-linear heads, autograd through the head otherwise) give each variant's weights; the maps are
    split into pos / neg parts (module docstring). `targets` (B,) holds class indices (the ground-truth
    labels in the official protocol); with `pred` the maps for the softmax branch's top-1 prediction come
    too (`pred_pos` / `pred_neg`), from the same trunk forward. The model must be in eval mode
    (`check_eval_mode`); the result does not depend on which other images share the batch.
    `amp`: on CUDA, run the trunk under bf16 autocast (faster; features, and so the logits, then differ
    from a float32 forward by bf16 rounding). Everything after the trunk is float32; ignored on the CPU.
    """
    check_eval_mode(model)
    variants = model_variants(model)
    device = next(model.head.parameters()).device
    # the caller's layout: a channels-last model (`place`) runs channels-last convolutions on either layout,
    # and a model left as it is gives exactly its own forward's logits
    images = images.to(device, non_blocking=True)
    targets = targets.to(device=device, dtype=torch.long)
    bf16 = amp and device.type == "cuda"
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        features = model.trunk(images)
    features = features.float()
    batch, channels, height, width = features.shape
    n = height * width
    linears = [gap_linear(h) for h in (model.head, model.head2)]
    gap = all(lin is not None for lin in linears)
    flat = features.reshape(batch, channels, n)
    with torch.no_grad():
        sum_a = flat.sum(dim=-1)[:, None]  # (B, 1, C)
        weights = [lin.weight.float() for lin in linears] if gap else None
        pooling = None if gap or not fast_path else pooled_heads(model)
        cells = None
        if gap and fast_path:
            pooled = features.mean(dim=(2, 3))
            logits, logits2 = (F.linear(pooled, w, lin.bias.float()) for w, lin in zip(weights, linears))
            kinds = [targets] + ([logits.argmax(1)] if pred else [])
            grads = None
        elif pooling is not None:
            # a pooling head: differentiate its tail on the pooled map, then map the gradient to the cells
            grid, tails = pooling
            to_cells, index, one_hot = (t.to(device) for t in pool_cells(height, width, grid))
            pooled = F.adaptive_avg_pool2d(features, grid)
            logits, logits2, pooled_grads = _autograd_heads(
                model, pooled, lambda out: [targets] + ([out.argmax(1)] if pred else []), tails
            )
            kinds = [targets] + ([logits.argmax(1)] if pred else [])
            grads = [
                torch.stack([g.reshape(batch, channels, -1) for g in gs], dim=1) @ to_cells for gs in pooled_grads
            ]  # per kind: (B, 2, C, P)
            cells = registry.GradCells(index, one_hot.sum(dim=0), flat @ one_hot)
        else:
            logits, logits2, grads = _autograd_heads(
                model, features, lambda out: [targets] + ([out.argmax(1)] if pred else [])
            )
            kinds = [targets] + ([logits.argmax(1)] if pred else [])
        results = []
        for k, t in enumerate(kinds):
            # The prediction's maps differ from the ground truth's only where the two classes differ.
            sel = None if k == 0 else (t != targets).nonzero()[:, 0]
            if sel is not None and len(sel) == 0:
                results.append(results[0])
                continue
            part = slice(None) if sel is None else sel
            rows = torch.stack([w[t[part]] for w in weights], dim=1) if gap else None  # (b, 2, C)
            if grads is None:
                inputs = CamInputs(flat[part], sum_a[part], (rows / n)[..., None], constant_grad=True, head_rows=rows)
                pos, neg = _maps(variants, inputs)
            elif cells is not None:
                pos, neg = _maps(variants, CamInputs(flat[part], sum_a[part], grads[k][part], cells=cells[part]))
            else:
                pos, neg = _chunked_maps(variants, flat[part], sum_a[part], [g[part] for g in grads[k]], rows)
            pos, neg = (m.reshape(*m.shape[:3], height, width) for m in (pos, neg))
            if sel is not None:
                full_pos, full_neg = results[0][0].clone(), results[0][1].clone()
                full_pos[sel], full_neg[sel] = pos, neg
                pos, neg = full_pos, full_neg
            results.append((pos, neg))
    (pos, neg), pred_maps = results[0], (results[1] if pred else (None, None))
    return CamBatch(
        logits=logits,
        logits2=logits2,
        pos=pos,
        neg=neg,
        variants=tuple(v.name for v in variants),
        pred_pos=pred_maps[0],
        pred_neg=pred_maps[1],
    )
