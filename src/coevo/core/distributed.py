"""One coevo command as several processes: ``torchrun --nproc_per_node N -m coevo ...``.

torchrun starts N copies of the command and tells each its place through the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; ``TORCHELASTIC_RESTART_COUNT``
after a restart). :func:`init` joins them into one process group: gloo for CPU
tensors and, on a machine with CUDA, NCCL for CUDA tensors, each process on
``cuda:LOCAL_RANK`` (``device: cuda`` then means that GPU). Outside torchrun, or
with one process, every function here acts on a world of one, so library code
calls them unconditionally.

Roles: rank 0 (:func:`is_main`) writes every file: run folders, checkpoints,
logs, plots. The other ranks compute and read. :func:`on_main` runs a piece of
work on rank 0 only and hands its result to every rank (the others wait);
:func:`shard` splits independent work items across the ranks and hands every
rank every result. Every node must see the data, the teacher and the run folder
at the same path (one machine, or a shared file system).
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

from ..errors import CoevoError
from ..errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# How long a rank waits for the others: rank-0-only work (building the data set,
# export, bench) runs while the others wait in a collective.
TIMEOUT = timedelta(hours=1)


class DistributedError(CoevoError, RuntimeError):
    """The processes of one job disagree (e.g. on the search state), or the launch cannot be used."""


class PeerError(CoevoError, RuntimeError):
    """Raised on the ranks whose work did not fail when another rank's did; that rank reports the error."""


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process (a world of one outside torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    restart_count: int = 0
    torchrun: bool = False


def launch() -> Launch:
    env = os.environ
    return Launch(world_size=int(env.get("WORLD_SIZE", 1)), rank=int(env.get("RANK", 0)),
                  local_rank=int(env.get("LOCAL_RANK", 0)),
                  restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
                  torchrun="TORCHELASTIC_RESTART_COUNT" in env)


def init() -> bool:
    """Join the process group torchrun describes (once); False outside torchrun or for one process."""
    if is_distributed():
        return True
    here = launch()
    if here.world_size <= 1:
        return False
    backend = "gloo"
    if torch.cuda.is_available() and here.local_rank < torch.cuda.device_count():
        # Object collectives and barriers travel over gloo, CUDA tensors (DDP) over NCCL.
        torch.cuda.set_device(here.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
        # torchrun's agent hosts the store at MASTER_ADDR:MASTER_PORT and keeps it across restarts
        # (static rendezvous): a restarted group under the old keys would meet the dead one's
        # addresses, so each attempt gets a prefix of its own.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), here.world_size,
                              is_master=False, timeout=TIMEOUT)
        dist.init_process_group(backend, store=dist.PrefixStore(f"coevo/attempt_{here.restart_count}", store),
                                rank=here.rank, world_size=here.world_size, timeout=TIMEOUT)
    else:
        dist.init_process_group(backend, timeout=TIMEOUT)
    log.info("rank %d of %d (local rank %d), backend %s", here.rank, here.world_size, here.local_rank, backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def check_launch_device(device: str) -> None:
    """ConfigError for a device that cannot serve every process of this launch."""
    here = launch()
    dev = torch.device(device)
    if here.world_size <= 1 or dev.type != "cuda":
        return
    if dev.index is not None:
        raise ConfigError(f"device={device} under torchrun: give device=cuda; each process takes "
                          "cuda:LOCAL_RANK (its local rank)")
    if here.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started local rank {here.local_rank} but this node has "
                          f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes per node")


# ----------------------------------------------------------------------------- collectives
# Inside on_main, rank 0 runs alone: collectives there would wait for ranks that never come.
_main_only_depth = 0


def _collective() -> bool:
    return _main_only_depth == 0 and is_distributed()


def barrier() -> None:
    if _collective():
        dist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not _collective():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: T) -> List[T]:
    """Every rank's ``obj``, in rank order, on every rank (pickled)."""
    if not _collective():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: T) -> Optional[List[T]]:
    """Every rank's ``obj`` in rank order on rank 0; None on the others."""
    if not _collective():
        return [obj]
    out: Optional[List[Any]] = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor; ``t`` itself with one process)."""
    if not _collective():
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def check_same(value: Any, what: str) -> None:
    """DistributedError on every rank unless every rank holds the same ``value`` (e.g. a digest)."""
    values = all_gather(value)
    if any(v != values[0] for v in values[1:]):
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise DistributedError(
            f"the processes disagree on {what} (ranks {differ} differ from rank 0). Their computations "
            "must be bit-identical: give every process the same thread count (OMP_NUM_THREADS, --threads) "
            "and the same kind of CPU or GPU")


def on_main(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` on rank 0 only; its (picklable) result on every rank.

    The other ranks wait. When ``fn`` raises on rank 0, rank 0 raises that error and
    the others raise :class:`PeerError`, so every process stops. Calls nest: inside
    ``fn``, :func:`on_main`, :func:`barrier` and the collectives run rank 0's part alone.
    """
    global _main_only_depth
    if not _collective():
        return fn(*args, **kwargs)
    if not is_main():
        kind, payload = broadcast(None)
        if kind == "ok":
            return payload
        raise PeerError(f"rank 0 failed: {payload}")
    _main_only_depth += 1
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:
        _main_only_depth -= 1
        broadcast(("error", f"{type(e).__name__}: {e}"))
        raise
    _main_only_depth -= 1
    broadcast(("ok", value))
    return value


def assign(costs: Sequence[Sequence[float]]) -> List[int]:
    """A rank for each item, ``costs[i][r]`` being what item ``i`` costs on rank ``r``.

    Each item first goes where it is cheapest (the least loaded rank on ties, so
    equal costs deal the items out in turn); then items move off the busiest rank
    to the least busy one while that finishes the whole sooner. Deterministic: every
    rank computes the same assignment.
    """
    world = len(costs[0]) if costs else 1
    load = [0.0] * world
    out = []
    for c in costs:
        r = min(range(world), key=lambda r: (c[r], load[r], r))
        out.append(r)
        load[r] += c[r]
    for _ in range(len(costs) * world):
        hi = max(range(world), key=lambda r: (load[r], -r))
        lo = min(range(world), key=lambda r: (load[r], r))
        moves = [(max(load[hi] - costs[i][hi], load[lo] + costs[i][lo]), i) for i, r in enumerate(out) if r == hi]
        if not moves or min(moves)[0] >= load[hi]:
            break
        i = min(moves)[1]
        out[i] = lo
        load[hi] -= costs[i][hi]
        load[lo] += costs[i][lo]
    return out


def shard(fn: Callable[[T], R], items: Sequence[T],
          cost: Optional[Callable[[int, int], float]] = None) -> Tuple[List[R], List[int]]:
    """``[fn(item) for item in items]`` with each item computed by one rank.

    Every rank must call it with the same items. ``cost(i, r)``: what item ``i``
    costs on rank ``r`` (default 1), for :func:`assign`. Returns the results, in
    order and the same on every rank, and the rank that computed each. ``fn``'s
    results travel pickled, so floats arrive bit-exact.
    A :class:`CoevoError` on any rank is raised on every rank (its own on the rank
    that had it, :class:`PeerError` elsewhere).
    """
    items = list(items)
    if not items:  # every rank holds the same (empty) list: nothing to exchange
        return [], []
    if not _collective():
        return [fn(x) for x in items], [0] * len(items)
    me = rank()
    ranks = range(world_size())
    who = assign([[1.0 if cost is None else cost(i, r) for r in ranks] for i in range(len(items))])
    mine, error = {}, None
    for i, x in enumerate(items):
        if who[i] == me:
            try:
                mine[i] = fn(x)
            except CoevoError as e:
                error = e
                break
    gathered = all_gather((mine, None if error is None else f"{type(error).__name__}: {error}"))
    failed = [(r, msg) for r, (_, msg) in enumerate(gathered) if msg is not None]
    if error is not None:
        raise error
    if failed:
        raise PeerError(f"rank {failed[0][0]} failed: {failed[0][1]}")
    results: dict = {}
    for part, _ in gathered:
        results.update(part)
    return [results[i] for i in range(len(items))], who


# ----------------------------------------------------------------------------- restarts
def restart_count() -> int:
    """How often torchrun has restarted this job (``--max-restarts``); 0 on its first attempt."""
    return launch().restart_count


def _process_start(pid: int) -> str:
    try:
        stat = open(f"/proc/{pid}/stat").read()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime
    except (OSError, IndexError):
        return "?"


def job_id() -> Optional[str]:
    """The same for every attempt of one torchrun job, different for any other job; None outside torchrun.

    torchrun's ``--rdzv-id`` (a fresh uuid with ``--standalone``); with the default
    static rendezvous, which has none, the torchrun process on this node (host, pid,
    start time): rank 0 lives on node 0 in every attempt.
    """
    here = launch()
    if not here.torchrun:
        return None
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"rdzv:{run_id}"
    agent = os.getppid()
    return f"agent:{socket.gethostname()}:{agent}:{_process_start(agent)}"
