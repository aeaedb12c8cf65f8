"""Training on several processes: torchrun's environment, DDP or FSDP2 around a single-device model,
global reductions, and sharded checkpoints through Distributed Checkpoint (DCP).

`init_world(device=...)` reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE, gives each process its device
(`cuda:<local rank>` on a GPU node, the CPU otherwise) and opens the process group with the backend that
device needs (nccl for CUDA, gloo for the CPU), with a timeout so a lost rank ends the job instead of
hanging it. `parallelize(model, ...)` applies the chosen strategy from outside the model:
- "ddp": `DistributedDataParallel`; every rank holds the whole model and optimizer, gradients are
  all-reduced (averaged) after backward;
- "fsdp": FSDP2 `fully_shard` on every element of the model's `nn.ModuleList`s (GPT's blocks) and then
  on the root, so parameters, gradients and AdamW states are sharded along dim 0 over the ranks
  (ZeRO-3); with bf16 precision a `MixedPrecisionPolicy` computes in bf16 and reduces in fp32;
- "none": one process, the model as it is.
`gradient_sync(model, enabled=...)` turns the gradient reduction off for all but the last micro-batch of
an accumulated step (`no_sync` for DDP, `set_requires_gradient_sync` for FSDP2).

Checkpoints of a sharded model (`save_sharded` / `load_into`): each rank writes its own shards with
`torch.distributed.checkpoint` into safetensors files (`HuggingFaceStorageWriter`, which records each
shard's offsets as JSON in the file header: no pickle anywhere), under the same tensor names as a
single-process checkpoint (`<param fqn>` for weights, `state.<index>.<name>` for the optimizer). So one
reader (`HuggingFaceStorageReader` + DCP's resharding) loads either kind of checkpoint into a model
sharded over any number of ranks, or into a plain model: 2 -> 1 and 1 -> 2 are the same code.
The commit is atomic as in checkpoint.py: all ranks write into a temporary directory, rank 0 adds
`trainer_state.json` plus a consolidated `model.safetensors` and `meta.json` (so generate, eval and
convert read the result like any checkpoint) and renames the directory into place only after every
rank has finished; a rank killed mid-save leaves the previous checkpoint as it was.

Deliberately not here: the loop (trainer.py), what a checkpoint's trainer state holds (trainer.py,
checkpoint.py), tensor or pipeline parallelism. Multi-node runs need a directory all nodes share.
References: PyTorch's DDP and FSDP2 (`torch.distributed.fsdp.fully_shard`) documentation; torchtitan's
`parallelize.py` (sharding each block, then the root); ZeRO (Rajbhandari et al., 2020).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, fault_point, replace_dir
from lmforge.training.checkpoint import FORMAT_VERSION, CheckpointManager
from lmforge.training.config import PARALLEL

SHARDS_DIR = "shards"  # a sharded checkpoint's per-rank safetensors files


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int  # 0 .. world_size - 1, over all nodes
    local_rank: int  # index on this node; picks the GPU
    world_size: int  # processes in the job
    device: torch.device
    backend: str | None  # "gloo" or "nccl"; None for a single process (no process group)
    owns_group: bool = False  # init_world opened the process group (and close_world closes it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when run without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_world(*, device: torch.device, timeout_s: float = 600.0) -> World:
    """Join the job torchrun started (or describe the lone process without torchrun).

    `device` is `train.device` resolved: a CUDA device gives each rank `cuda:<LOCAL_RANK>`; the CPU keeps
    every rank on the CPU. A collective that waits longer than `timeout_s` (a rank died or raised) fails
    on the ranks still alive instead of hanging them.
    """
    world_size = env_world_size()
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if world_size == 1:
        return World(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    cuda = device.type == "cuda"
    chosen = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(chosen)
    backend = "nccl" if cuda else "gloo"
    owns_group = not dist.is_initialized()  # a caller may have opened it (a test running several trainings)
    if owns_group:
        timeout = timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
        # torchrun keeps its store across restarts (--max-restarts): keys of the attempt that failed
        # (e.g. the old rank 0's address) must not be read by the next one.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"lmforge-attempt-{attempt}", store),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=chosen if cuda else None,
        )
    return World(rank, local_rank, world_size, chosen, backend, owns_group)


def close_world(world: World, *, finished: bool = True) -> None:
    """Leave the process group `init_world` opened (no-op for a single process). `finished=False` after
    an error: the other ranks may never reach a barrier, so leave at once."""
    if not (world.owns_group and dist.is_initialized()):
        return
    if finished:
        drain_collectives(world)
    dist.destroy_process_group()


def drain_collectives(world: World) -> None:
    """Return once every rank has finished its collectives and gloo has let go of their tensors.

    Why: gloo's worker threads drop their hold on a finished collective (and, through a barrier, on the
    collectives it waited for) a moment after the caller sees it complete, and dropping a tensor takes
    the GIL. DDP keeps the process group, and so those threads, alive past `destroy_process_group`; a
    thread that asks for the GIL once the interpreter has begun to shut down aborts the process
    (SIGABRT after a finished run: 3 of 52 repeats of the distributed tests' torchrun job, 0 of 60
    with this drain). Sleeping hands the GIL to those threads.
    """
    barrier(world)
    if world.backend == "gloo":
        time.sleep(0.1)


def resolve_parallel(parallel: str, world_size: int) -> str:
    """'none', 'ddp' or 'fsdp'. "auto" is none for one process and ddp otherwise; a lone process runs
    any strategy as "none" (so a run of 2 processes can be resumed on 1 with the same config)."""
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel={parallel!r} is invalid; choose one of {PARALLEL}")
    if world_size == 1:
        return "none"
    if parallel == "none":
        raise ConfigError(
            f"train.parallel='none' with {world_size} processes would train {world_size} unrelated models; "
            "use ddp or fsdp (or auto), or run a single process"
        )
    return "ddp" if parallel == "auto" else parallel


def parallelize(model: nn.Module, *, parallel: str, world: World, precision: str) -> nn.Module:
    """The module the training step calls: `model` wrapped by DDP, sharded in place by FSDP2, or as is.

    FSDP2 changes `model` itself (its parameters become DTensor shards) and returns it; DDP returns a
    wrapper whose `.module` is `model`. Every rank must have built `model` from the same seed: FSDP2
    shards the values each rank holds without broadcasting them.
    """
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16":  # compute in bf16, reduce gradients and keep the master weights in fp32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module_list in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in module_list:
            fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gradient_sync(model: nn.Module, *, enabled: bool) -> contextlib.AbstractContextManager:
    """A context in which backward reduces gradients across ranks (enabled) or only accumulates them
    locally (the micro-batches before the last one of an accumulated step)."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (the values themselves without a process group)."""
    if not dist.is_initialized():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shard_batches(
    batches: list[tuple[torch.Tensor, torch.Tensor]], *, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of evaluation batches: rows rank, rank + W, ... of all of them, in batches of
    `batch_size`, padded to the same number of batches on every rank with a copy of the first row whose
    targets are all IGNORE_INDEX (scored as nothing, but its forward keeps FSDP's collectives in step).
    Fewer rows than ranks: every rank scores them all. Summing (loss x tokens) and tokens over the ranks
    then gives the single-process mean over all rows.
    Example: 2 batches of 3 rows (rows 0-5), 2 ranks, batch_size 2 -> rank 0 scores rows (0, 2), (4);
    rank 1 scores rows (1, 3), (5).
    """
    from lmforge.models.gpt import IGNORE_INDEX

    if not dist.is_initialized():
        return batches
    rank, world_size = dist.get_rank(), dist.get_world_size()
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])  # (N, T) each
    if len(x) < world_size:
        return batches
    mine_x, mine_y = x[rank::world_size], y[rank::world_size]
    count = math.ceil(math.ceil(len(x) / world_size) / batch_size)  # batches of the rank with the most rows
    mine = [
        (mine_x[i : i + batch_size], mine_y[i : i + batch_size]) for i in range(0, len(mine_x), batch_size)
    ]
    padding = (x[:1], torch.full_like(y[:1], IGNORE_INDEX))
    return mine + [padding] * (count - len(mine))


def barrier(world: World) -> None:
    """Wait for every rank (no-op for a single process)."""
    if world.backend is not None:
        dist.barrier()


def broadcast_from_main(values: list[float]) -> list[float]:
    """Rank 0's numbers on every rank (the values themselves without a process group)."""
    if not dist.is_initialized():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


# ---------------------------------------------------------------- checkpoint tensors


def _flat_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict, dict]:
    """The model's and optimizer's tensors under single-process checkpoint names, and the two state
    dicts of `torch.distributed.checkpoint.state_dict` they are views of.

    Names: model tensors by fully qualified name with a tied copy (GPT's lm_head.weight, the same
    tensor as transformer.wte.weight) listed once, as `GPT.save_checkpoint` writes it; optimizer tensors
    as `state.<index>.<name>`, index = the parameter's position in the optimizer's param groups, as
    `checkpoint._optimizer_to_files` writes it.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    flat: dict[str, Any] = {}
    seen: set[int] = set()  # storage addresses: a tied weight is two names for one storage
    for name, tensor in model_sd.items():
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.numel() and local.data_ptr() in seen:
            continue
        seen.add(local.data_ptr())
        flat[name] = tensor
    fqns = [fqn for group in optim_sd["param_groups"] for fqn in group["params"]]
    for index, fqn in enumerate(fqns):
        for key, value in optim_sd["state"].get(fqn, {}).items():
            if torch.is_tensor(value):
                flat[f"state.{index}.{key}"] = value
    return flat, model_sd, optim_sd


def save_sharded(
    directory: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer
) -> list[dict[str, Any]]:
    """Every rank writes its shards of model and optimizer into `directory/shards/` (collective).
    Returns the optimizer's param_groups (hyper-parameters, JSON-serialisable) for trainer_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    flat, _, optim_sd = _flat_state(model, optimizer)
    writer = HuggingFaceStorageWriter(str(directory / SHARDS_DIR), save_distributed=dist.is_initialized())
    dcp.save(flat, storage_writer=writer)
    return [{k: v for k, v in group.items() if k != "params"} for group in optim_sd["param_groups"]]


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's tensors on the CPU of rank 0 (collective; other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def load_into(
    ckpt_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    param_groups: list[dict[str, Any]] | None,
) -> None:
    """Load a checkpoint written by any number of ranks (shards/) or by one process (model.safetensors
    and optimizer.safetensors) into `model` and `optimizer`, however they are sharded now. Called by
    every rank. A missing tensor or a shape that does not fit raises `FormatError` naming the directory.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    source = ckpt_dir / SHARDS_DIR if (ckpt_dir / SHARDS_DIR).is_dir() else ckpt_dir
    flat, model_sd, optim_sd = _flat_state(model, optimizer)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*load in a single process")
            dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(source)))
    except Exception as e:  # DCP wraps every reader failure in CheckpointException
        raise FormatError(
            source, f"the checkpoint's tensors do not fit this model and optimizer ({e})"
        ) from None
    for group, saved in zip(optim_sd["param_groups"], param_groups or [], strict=False):
        group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def save_sharded_checkpoint(
    manager: CheckpointManager,
    step: int,
    *,
    is_best: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    world: World,
) -> Path:
    """`CheckpointManager.save` for a sharded model, called by every rank; returns `step_<step>/`.

    Rank 0 first cleans up after an earlier crash, then names a temporary directory that every rank
    writes its shards into; rank 0 adds the consolidated weights (`model.safetensors`, `meta.json`: the
    model's own `save_checkpoint`) and `trainer_state.json`, and renames the directory into place once
    all ranks have written. A crash anywhere before that rename leaves only a `.tmp-` directory, which
    the next save or start removes.
    """
    final = manager.step_dir(step)
    if world.is_main:
        manager.recover()
        final.parent.mkdir(parents=True, exist_ok=True)
    tag = int(broadcast_from_main([float(uuid.uuid4().int % 2**52)])[0])  # one name on every rank
    tmp = final.parent / f".{final.name}.tmp-{tag:013x}"
    try:
        param_groups = save_sharded(tmp, model=model, optimizer=optimizer)
        fault_point(f"checkpoint:shards-written-rank{world.rank}")
        full = full_model_state(model)  # collective: every rank has finished writing its shards
        if world.is_main:
            model.save_checkpoint(tmp, meta=meta, state_dict=full)
            optimizer_rest = {"param_groups": param_groups, "scalars": {}}
            state = {"format_version": FORMAT_VERSION, **trainer_state, "optimizer": optimizer_rest}
            atomic_write_json(tmp / "trainer_state.json", state, indent=None)
            fault_point("checkpoint:before-rename")
            replace_dir(tmp, final)
            manager.finish_save(final, is_best=is_best)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
