"""Several processes (one per GPU) through torchrun: launch, rank-aware devices, DDP and ordered gathers.

`distributed.nproc` (params.yaml) picks the process count of the baseline, finetune, cams and evaluate stages.
With nproc > 1 and no torchrun around it (no LOCAL_RANK / WORLD_SIZE in the environment), a stage re-launches
itself as `python -m torch.distributed.run --standalone --nproc_per_node=N -m pipeline.stages.<name>` and
exits with torchrun's status (non-zero when any rank fails). Under torchrun each rank joins the process
group (`distributed.backend`: auto = nccl on CUDA, gloo on the CPU) and computes on cuda:LOCAL_RANK, or the
CPU without CUDA. In a single process every helper here is the identity or a no-op.

- Training (baseline, finetune): the module that trains is wrapped in DistributedDataParallel (`ddp`); the
  train loader draws from a seeded DistributedSampler (`train_sampler`, re-seeded per epoch by `set_epoch`)
  with `batch_size / nproc` images per rank, so the global batch and the learning rates stay those of one
  process; per-epoch sums are all-reduced (`reduce_sums`); rank 0 alone writes (its DVCLive logger is real,
  the others get `NullLive`); all meet at a barrier (`finish`). Every rank has the same seed (the same
  augmentation draws, on different images). Resume checkpoints (pipeline/train/resume.py) are rank 0's,
  restored by every rank (`share_checkpoints`). Not bit-identical to one process: the shuffle order differs,
  BatchNorm statistics come from each rank's share of a batch and gradients are summed in another order.
- cams: the ordered loader is split into whole batches of the single-process loader, batch i to rank
  i % nproc (`map_ordered`), since on the CPU a map's floats depend on which images share its batch; each
  round the ranks' records are gathered to rank 0, which yields them in image order to the shard writer:
  data/cams/ is byte-identical to one process (on the CPU: given the same intra-op thread count, which the
  self-launch passes on).
- evaluate: each split's images are cut into blocks of whole batches, the same whatever the ranks, and each
  rank takes a contiguous run of them (pipeline/metrics/evaluate.py `rank_blocks`): every phase (reading,
  post-processing, scoring, fidelity, bootstrap sums) divides. Each distinct map set's partial sums go to
  one rank (`gather_to`), which reduces them; the results are gathered to rank 0, which writes metrics.json,
  intervals.json, evaluation.json and plots/, byte-identical to one process (same thread-count caveat on the
  CPU for the fidelity forwards).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

T = TypeVar("T")

BACKENDS = ("auto", "nccl", "gloo")
_cpu_group = None  # a gloo group for Python-object collectives (the default group when it is gloo already)


# ----------------------------------------------------------------------------------------------------
# Launch and process group


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) started this process as one rank."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def active() -> bool:
    """True inside a process group of more than one rank."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes outputs."""
    return rank() == 0


def uses_cuda(device: str) -> bool:
    """Whether the `device` param puts the work on a GPU here."""
    return device != "cpu" and torch.cuda.is_available()


def resolve_backend(backend: str, device: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"distributed.backend: '{backend}' is not valid; choose one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if uses_cuda(device) else "gloo"
    if backend == "nccl" and not uses_cuda(device):
        raise ValueError("distributed.backend: nccl needs CUDA devices; use auto or gloo on the CPU")
    return backend


def launch_command(module: str, nproc: int, args: list[str] | None = None) -> list[str]:
    """torchrun (of this interpreter's environment) running `python -m module ARGS` on `nproc` local ranks
    (ARGS: this process's command-line arguments unless given, e.g. a stage's replicate index)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *(sys.argv[1:] if args is None else args),
    ]


def relaunch(module: str, nproc: int, *, cuda: bool) -> int:
    """Run `module` under torchrun with `nproc` ranks; return its exit status.

    On the CPU each rank gets this process's intra-op thread count (OMP_NUM_THREADS, unless already set;
    torchrun would set 1): CPU kernels' float results depend on it, and the cams and evaluate outputs are
    meant to be byte-identical to one process. SIGTERM / SIGINT are passed on to torchrun, which stops
    the ranks.
    """
    env = dict(os.environ)
    if not cuda and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    proc = subprocess.Popen(launch_command(module, nproc), env=env)
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main_module() -> str:
    """The module name this process runs as (`python -m <name>`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name:
        raise ValueError("distributed.nproc > 1 needs the stage run as a module: python -m pipeline.stages.<name>")
    return spec.name.removesuffix(".__main__")


def setup(nproc: int, backend: str, device: str, module: str | None = None) -> None:
    """Called first by a stage that can run distributed.

    Not under torchrun and nproc > 1: re-launch under torchrun and exit with its status (never returns).
    Under torchrun with WORLD_SIZE > 1: join the process group and pin this rank's GPU. Otherwise nothing.
    """
    if not under_torchrun():
        if nproc > 1:
            module = module or main_module()
            backend = resolve_backend(backend, device)
            print(f"{module.rsplit('.', 1)[-1]}: {nproc} processes ({backend}) through torchrun", flush=True)
            raise SystemExit(relaunch(module, nproc, cuda=uses_cuda(device)))
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return
    backend = resolve_backend(backend, device)
    if backend == "nccl":
        gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(gpu)
        tdist.init_process_group(backend=backend, device_id=gpu)
    else:
        tdist.init_process_group(backend=backend)
    global _cpu_group
    _cpu_group = tdist.new_group(backend="gloo") if backend != "gloo" else None
    atexit.register(_destroy)


def _destroy() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for any CUDA device when distributed, else `device`."""
    if device.type == "cuda" and under_torchrun() and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        tdist.barrier()


def finish() -> None:
    """The end of a distributed stage on every rank: wait for the others (rank 0's writes), then leave."""
    if active():
        tdist.barrier()
        _destroy()


# ----------------------------------------------------------------------------------------------------
# Training


def ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel when distributed (its parameters all train), else itself."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def local_batch(batch_size: int) -> int:
    """Per-rank batch of a training loader: the global `batch_size` split evenly over the ranks."""
    world = world_size()
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} cannot be split evenly over distributed.nproc = {world} "
            f"processes; choose a batch size divisible by it"
        )
    return batch_size // world


def train_sampler(dataset, seed: int) -> DistributedSampler | None:
    """A seeded, shuffling DistributedSampler when distributed (None in one process: the loader shuffles)."""
    if not active():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Re-seed a DistributedSampler for `epoch` (a new shuffle per epoch, the same on every rank)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def reduce_sums(*values: Any) -> tuple[Any, ...]:
    """Each value (a tensor or a number) summed over the ranks, with its type, dtype and device kept."""
    if not active():
        return values
    comm = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for v in values:
        t = torch.tensor(v, dtype=torch.float64) if isinstance(v, float) else torch.as_tensor(v)
        wide = torch.float64 if t.is_floating_point() else torch.int64
        total = t.detach().to(comm, wide).clone()
        tdist.all_reduce(total)
        if isinstance(v, torch.Tensor):
            out.append(total.to(device=v.device, dtype=v.dtype))
        else:
            out.append(type(v)(total.item()))
    return tuple(out)


def share_checkpoints(checkpoints):
    """Distributed: resume checkpoints shared by the ranks (pipeline/train/resume.py's EpochCheckpoints).

    Rank 0's folder and key (with the world size folded in: a run on N processes resumes only a run on N
    processes) are broadcast, every rank restores from that one file, and rank 0 alone saves and clears it.
    In one process, or for None, `checkpoints` itself.
    """
    if checkpoints is None or not active():
        return checkpoints
    key = hashlib.sha256(f"{checkpoints.key}:world_size={world_size()}".encode()).hexdigest()
    directory = checkpoints.directory.parent / key[:16]
    key, directory = broadcast((key, directory))
    describe = {**(checkpoints.describe or {}), "world_size": world_size()} if is_main() else None
    shared = type(checkpoints)(directory, key, label=checkpoints.label, describe=describe)
    if shared.epochs_done and is_main():
        print(
            f"{shared.label}: resuming after epoch {shared.epochs_done} ({world_size()} processes, {shared.directory})",
            flush=True,
        )
    if not is_main():
        shared.save = lambda *args, **kwargs: None
        shared.clear = lambda: None
    return shared


class NullLive:
    """The DVCLive logger of ranks other than 0: accepts every call, writes nothing."""

    def __init__(self) -> None:
        self.summary: dict = {}
        self.step = 0

    def next_step(self) -> None:
        self.step += 1

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    def __enter__(self) -> NullLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


# ----------------------------------------------------------------------------------------------------
# Collectives on Python objects, and ordered work splitting (cams, evaluate)


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def gather(obj: T) -> list[T] | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
    if not active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    tdist.gather_object(obj, out, dst=0, group=_cpu_group)
    return out


def all_gather(obj: T) -> list[T]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    tdist.all_gather_object(out, obj, group=_cpu_group)
    return out


def gather_to(obj: T, owner: int) -> list[T] | None:
    """[obj of rank 0, obj of rank 1, ...] on rank `owner`, None elsewhere ([obj] in one process)."""
    if not active():
        return [obj]
    out = [None] * world_size() if rank() == owner else None
    tdist.gather_object(obj, out, dst=owner, group=_cpu_group)
    return out


def batch_indices(n: int, batch_size: int) -> list[list[int]]:
    """The dataset indices of each batch of an ordered loader over `n` items."""
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def rank_loader(loader: DataLoader, batches: Sequence[Sequence[int]]) -> DataLoader:
    """A loader over `loader`'s dataset that yields exactly `batches` (lists of indices), in order."""
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}
    return DataLoader(
        loader.dataset,
        batch_sampler=[list(b) for b in batches],
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
        **extra,
    )


def map_ordered(
    loader: DataLoader, ids: Sequence[str], fn: Callable[[DataLoader, list[str]], Iterable[T]]
) -> Iterator[T]:
    """`fn(loader, ids)` (one item per image, in loader order) spread over the ranks, batch by batch.

    In one process: fn(loader, ids) itself. Distributed: batch i of the ordered `loader` goes to rank
    i % world_size with the same images as in one process; each rank runs `fn` on a loader of its batches,
    and in round k the items of batches k * world_size ... (k + 1) * world_size - 1 are gathered to rank 0.
    Rank 0 yields every item in the single-process order; the other ranks yield nothing but must exhaust
    the iterator (it drives the gathers).
    """
    if not active():
        yield from fn(loader, list(ids))
        return
    if loader.batch_size is None or not isinstance(loader.sampler, SequentialSampler):
        raise ValueError("map_ordered needs an ordered loader with a batch size")
    world, me = world_size(), rank()
    batches = batch_indices(len(loader.dataset), loader.batch_size)
    if len(ids) != len(loader.dataset):
        raise ValueError(f"{len(ids)} image ids for a loader over {len(loader.dataset)} images")
    mine = batches[me::world]
    items = iter(fn(rank_loader(loader, mine), [ids[i] for b in mine for i in b]))
    for k in range(-(-len(batches) // world)):
        index = k * world + me
        chunk = list(islice(items, len(batches[index]))) if index < len(batches) else []
        parts = gather(chunk)
        if parts is not None:
            for part in parts:
                yield from part
    for _ in items:  # runs `fn` to its end (and its own checks); it must have nothing left
        raise ValueError("map_ordered: fn yielded more items than its loader has images")


def drain(items: Iterable[Any]) -> None:
    """Exhaust an iterator for its side effects (the other ranks' part of `map_ordered`)."""
    for _ in items:
        pass
