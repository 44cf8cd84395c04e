"""Data-parallel training strategies (``training.strategy``): ``single``, ``ddp`` and ``fsdp2``.

Launched with ``torchrun --nproc-per-node N -m reinforced train CONFIG`` (multi-node through torchrun's
rendezvous); the process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ...), on
``nccl`` for CUDA and ``gloo`` for the CPU. The loop calls the same hooks whatever the strategy; every
``torch.distributed`` call of the project lives in this module.

How a step is split (P prompts, W ranks):

- prompts: every rank holds the same full sampler and draws the global list of each round; rank r takes its
  own slice (``data.samplers.ShardedSampler``). Pass rates of all ranks are gathered before ``observe``, so
  the sampler state is the same on every rank and a checkpoint of it resumes exactly on any world size.
  A group (one prompt's G completions) never spans ranks, so group statistics stay local.
- DAPO dynamic sampling: each rank fills its share (P/W groups); ranks that are full join the others'
  rounds with empty draws (the sampler's collectives stay in step).
- batch-level advantage statistics (REINFORCE++ whitening, ``batch_zscore``, GPG's alpha, the critic's
  advantage whitening) sum over all ranks (``algorithms.advantages.batch_sums``).
- the loss normaliser of each optimiser step is all-reduced once (``LossNormalizer.combine``); each rank's
  loss is its share of the global loss, so the global gradient is the SUM of the ranks' gradients.
- logged metrics are means over ranks (rank 0 logs); checkpoints are written by rank 0 in the
  single-process layout (HF weights + trainer state with the optimiser state gathered to full tensors), so a
  run resumes on any world size.

``ddp``: the model is replicated and the gradients are summed with one bucketed all-reduce per optimiser
step, after all micro-batches (what ``DistributedDataParallel`` does with ``no_sync`` on every micro-batch
but the last). Written here rather than with the DDP wrapper because DDP needs every rank to run the same
number of backward passes (uneven kept batches under partial dynamic sampling, CPPO pruning or a skipped
non-finite micro-batch break that) and its wrapper hides the Hugging Face model's attributes
(``get_output_embeddings``, ``base_model``) the fused LM head reads.

``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder layer, then on the root (PyTorch's FSDP2,
per-parameter DTensor sharding on dim 0). Every forward all-gathers, so ranks run the same number of
forward/backward passes: the micro-batch count is the maximum over ranks, padded with zero-weight repeats
(``lockstep``). The fused LM head reads the head weight outside the module's forward, which a sharded
parameter does not allow, so under FSDP2 logprobs fall back to the model's full logits (``fusable_head``
returns None for a DTensor head; same numbers, the [n, T, V] logits of a micro-batch are materialised).
Generation samples from a full, unsharded copy of the policy refreshed from the shards (``full_tensor``)
after every update: decoding per rank with different lengths cannot run collectives in step. This costs one
full copy of the weights per rank; the vLLM engine (``rollout.engine: vllm``) holds its own copy anyway.
The reference model stays replicated (frozen, no optimiser state); a critic or value head is replicated
with its gradients summed as under ``ddp``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reinforced.algorithms import LossNormalizer
from reinforced.registry import Registry

T = TypeVar("T")
_BUCKET_NUMEL = 1 << 23  # 32 MiB of float32 per all-reduce


def launched_distributed() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Strategy:
    """``single``: one process. The base of the data-parallel strategies (every collective is the identity)."""

    name = "single"

    def __init__(self) -> None:
        self.rank, self.world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives ------------------------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over ranks (a new tensor, same device and dtype)."""
        return tensor

    def gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order (picklable objects)."""
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank."""

    def combine(self, normalizer: LossNormalizer) -> LossNormalizer:
        """The optimiser step's normaliser over all ranks (``LossNormalizer.combine`` of every rank's)."""
        return LossNormalizer.combine(self.gather(normalizer))

    def mean_stats(self, stats: dict[str, float], summed: Sequence[str] = ()) -> dict[str, float]:
        """Per-key means over the ranks that report the key (rank 0 logs the result); keys in ``summed``
        (a rank's share of the global loss, token counts) are added instead."""
        parts = self.gather(stats)
        keys = dict.fromkeys(k for p in parts for k in p)
        return {k: sum(p[k] for p in parts if k in p) / (1 if k in summed else sum(k in p for p in parts))
                for k in keys}

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (a skip decision every rank must share)."""
        return any(self.gather(bool(flag)))

    collective_forward = False
    loss_scale = 1.0
    """Factor on each rank's loss before backward (FSDP2's reduce-scatter averages: W undoes the mean)."""
    """True when a forward/backward is a collective: every rank runs the same number of them."""

    def clip_grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients of ``params`` to global norm ``max_norm``; returns the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(list(params), max_norm))

    def lockstep(self, items: Sequence[T]) -> list[tuple[T, float]]:
        """``items`` with weight 1; strategies whose forward is a collective pad to the ranks' maximum count
        with zero-weight repeats of the last item (never empty: a rank with nothing repeats nothing)."""
        return [(x, 1.0) for x in items]

    # -- models -------------------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard or replicate ``model`` in place (same module, same parameter names); returns it."""
        return model

    def prepare_replicated(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module every rank holds whole (critic, value head): same initial weights on every rank."""
        return module

    def sync_grads(self, params: Sequence[torch.nn.Parameter], loss_scale: float = 1.0) -> None:
        """Sum the gradients of replicated ``params`` over ranks (after the micro-batches of a step), divided
        by the ``loss_scale`` their backward ran with."""

    def rollout_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The full model the rollout engine samples from (the training model itself when unsharded); called
        before ``prepare``."""
        return model

    def refresh_rollout_model(self, model: torch.nn.Module, rollout: torch.nn.Module) -> None:
        """Copy the trained weights into ``rollout`` (a collective under FSDP2; a no-op when they are one)."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser's state dict in the single-process layout (full tensors)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def load_full_weights(self, model: torch.nn.Module, rollout: torch.nn.Module,
                          load: Callable[[torch.nn.Module], None]) -> None:
        """Run ``load`` (fills a whole, unsharded module) and bring its weights into ``model``."""
        load(model)

    def close(self) -> None:
        """Leave the process group (when this strategy created it)."""


STRATEGIES: Registry[Callable[[], Strategy]] = Registry("training strategy")
STRATEGIES.register("single")(Strategy)


class DataParallel(Strategy):
    """``ddp``: replicated weights, gradients summed over ranks once per optimiser step."""

    name = "ddp"

    def __init__(self) -> None:
        super().__init__()
        if not launched_distributed() and not dist.is_initialized():
            raise ValueError(f"training.strategy={self.name} needs several processes: launch with "
                             f"`torchrun --nproc-per-node N -m reinforced train CONFIG`, or use strategy=single")
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("REINFORCED_BACKEND") != "gloo" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone().to(self.device)
        dist.all_reduce(out)
        return out.to(tensor.device)

    def gather(self, obj: T) -> list[T]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.prepare_replicated(model)

    def prepare_replicated(self, module: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():  # same start on every rank, whatever each rank's RNG did while loading
            for t in [*module.parameters(), *module.buffers()]:
                if t.is_floating_point():
                    buf = t.detach().to(self.device)
                    dist.broadcast(buf, src=0)
                    t.copy_(buf)
        return module

    def sync_grads(self, params: Sequence[torch.nn.Parameter], loss_scale: float = 1.0) -> None:
        grads = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1).float() for g in bucket]).to(self.device)
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g) / loss_scale)
                offset += g.numel()

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


STRATEGIES.register("ddp")(DataParallel)


@STRATEGIES.register("fsdp2")
class FullyShard(DataParallel):
    """``fsdp2``: ``fully_shard`` per decoder layer + root; full copy for generation and checkpoints."""

    name = "fsdp2"
    collective_forward = True

    def clip_grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
        """Global norm over sharded gradients (squared norms of the local shards summed over ranks) and
        replicated ones (a value head: counted once); the same coefficient as ``clip_grad_norm_``."""
        grads = [p.grad for p in params if p.grad is not None]
        zero = torch.zeros((), dtype=torch.float64)
        sharded = sum((g.to_local().double().square().sum().cpu() for g in grads if _is_dtensor(g)), zero)
        replicated = sum((g.double().square().sum().cpu() for g in grads if not _is_dtensor(g)), zero)
        norm = float((self.all_reduce_sum(sharded) + replicated).sqrt())
        coef = min(1.0, max_norm / (norm + 1e-6))
        if coef < 1.0:
            for g in grads:
                (g.to_local() if _is_dtensor(g) else g).mul_(coef)
        return norm

    def lockstep(self, items: Sequence[T]) -> list[tuple[T, float]]:
        out = [(x, 1.0) for x in items]
        most = max(self.gather(len(out)))
        if len(out) < most:
            if not out:
                raise RuntimeError(f"rank {self.rank} has no micro-batch while another rank has {most}: "
                                   f"every rank needs rows under fsdp2 (a group never spans ranks)")
            out += [(items[-1], 0.0)] * (most - len(out))
        return out

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import fully_shard

        self.prepare_replicated(model)  # identical weights before sharding
        for layer in reversed(decoder_layers(model)):  # inner blocks before the blocks that hold them
            fully_shard(layer)
        fully_shard(model)
        # each rank's loss is its share of the global loss, so the gradient is the sum over ranks; the
        # reduce-scatter averages (a divide factor of 1 needs PREMUL_SUM, which gloo lacks): loss_scale = W
        self.loss_scale = float(self.world_size)
        return model

    def rollout_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A plain deep copy, taken before ``prepare`` shards ``model``; refreshed from the shards."""
        full = copy.deepcopy(model)
        for p in full.parameters():
            p.requires_grad_(False)
        return full

    def refresh_rollout_model(self, model: torch.nn.Module, rollout: torch.nn.Module) -> None:
        _unshard_into(model, rollout)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        state = optimizer.state_dict()
        state["state"] = {i: {k: _full(v) for k, v in s.items()} for i, s in state["state"].items()}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p in params:  # full tensors from the checkpoint -> this rank's shard of each
            s = optimizer.state.get(p, {})
            for k, v in s.items():
                if _is_dtensor(p) and torch.is_tensor(v) and v.dim() > 0 and not _is_dtensor(v):
                    s[k] = _shard_like(v, p)

    def load_full_weights(self, model: torch.nn.Module, rollout: torch.nn.Module,
                          load: Callable[[torch.nn.Module], None]) -> None:
        load(rollout)
        full = dict(rollout.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(_shard_like(full[name].detach(), p))
        _unshard_into(model, rollout)  # tied weights and all: the copy equals the shards again


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one: every ``ModuleList`` child of the model (decoder layers,
    and a vision tower's blocks in a VLM)."""
    layers = [m for lst in model.modules() if isinstance(lst, torch.nn.ModuleList) for m in lst]
    if not layers:
        raise ValueError(f"fsdp2: {type(model).__name__} has no ModuleList of layers to shard")
    return layers


def _is_dtensor(t: Any) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def _full(t: Any) -> Any:
    """A DTensor's full value on this rank (a collective: every rank calls it in the same order)."""
    return t.full_tensor() if _is_dtensor(t) else t


def _shard_like(full: torch.Tensor, like: Any) -> Any:
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def _unshard_into(model: torch.nn.Module, full: torch.nn.Module) -> None:
    """Gather ``model``'s sharded parameters into the plain copy ``full`` (same names)."""
    target = dict(full.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            target[name].copy_(_full(p.detach()))


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        bucket.append(t)
        size += t.numel()
        if size >= _BUCKET_NUMEL:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def build_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; under torchrun, ``single`` is an error (every rank would train
    the whole batch alone and write the same run directory)."""
    if name == "single" and launched_distributed():
        raise ValueError("launched with several processes (WORLD_SIZE > 1) but training.strategy=single: "
                         "set training.strategy=ddp or fsdp2")
    return STRATEGIES[name]()


@contextlib.contextmanager
def main_first(strategy: Strategy) -> Iterator[None]:
    """Rank 0 runs the block first (creating files), then the others."""
    if not strategy.is_main:
        strategy.barrier()
    yield
    if strategy.is_main:
        strategy.barrier()
