"""The processes of one image run: one process, independent shards, or a process group started
by ``accelerate launch`` (or ``torchrun``).

:class:`Processes` is what :func:`~hiergen.imagenet.forward_backward.run_forward_backward` and
:func:`~hiergen.imagenet.probe.run_probe` use to split their work, gather what needs gathering
and let the main process write the single results:

* under ``accelerate launch`` (``WORLD_SIZE`` > 1 from its torchrun launcher, ``--multi_gpu``;
  or ``PMI_SIZE`` / ``OMPI_COMM_WORLD_SIZE`` / ``MV2_COMM_WORLD_SIZE`` > 1 from mpirun, which is
  how ``accelerate launch --cpu --num_processes N --mpirun_hostfile FILE`` starts CPU
  processes): accelerate's ``PartialState`` -
  :meth:`Processes.split` is ``split_between_processes`` (contiguous blocks of batches),
  :meth:`Processes.gather` is ``accelerate.utils.gather_object`` (every process receives the
  list), :meth:`Processes.barrier` is ``wait_for_everyone``;
* ``--shard-index/--num-shards`` (independent jobs with no process group, e.g. a SLURM job
  array): every ``num_shards``-th batch, no communication; the run folder's locks and files
  coordinate them, and whichever shard finishes last merges;
* otherwise one process.

Work is always split in whole batches of the run's ``batch_size``, and every image is seeded by
itself, so any number of processes writes the files (and values) of one process.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from hiergen.imagenet.data import shard
from hiergen.models.errors import ConfigError

#: ``accelerate launch --mixed_precision`` values and the autocast dtype names they mean
MIXED_PRECISION = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}

#: environment variables holding the number of processes of a launch, in accelerate's order
#: (``accelerate.utils.environment.get_cpu_distributed_information``): torchrun's, then those of
#: mpirun (MPICH / Intel MPI, Open MPI, MVAPICH). ``accelerate launch --cpu`` starts several
#: processes only through mpirun, which sets the MPI ones and not ``WORLD_SIZE``.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class Processes:
    """This process's place in a run: ``index`` of ``count``, and an accelerate ``PartialState``
    when the processes form a group (``state``; then they communicate)."""

    def __init__(self, index: int = 0, count: int = 1, state: Any = None) -> None:
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"bad sharding: shard index {index} of {count} shards")
        self.index, self.count, self.state = int(index), int(count), state

    @property
    def communicates(self) -> bool:
        """Whether the processes form a group (accelerate / torchrun) and can gather."""
        return self.state is not None and self.count > 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def split(self, items: Sequence) -> list:
        """This process's items: a contiguous block (``split_between_processes``) in a group,
        every ``count``-th item for independent shards, all of them for one process."""
        if self.communicates:
            with self.state.split_between_processes(list(items)) as mine:
                return list(mine)
        return shard(items, self.index, self.count)

    def gather(self, obj: Any) -> list:
        """``[obj of process 0, obj of process 1, ...]`` on every process of a group; ``[obj]``
        otherwise (independent shards cannot gather)."""
        if not self.communicates:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def barrier(self) -> None:
        """Wait until every process of the group gets here (nothing without a group)."""
        if self.communicates:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (in a group)."""
        if not self.communicates:
            yield
            return
        with self.state.main_process_first():
            yield

    def __repr__(self) -> str:
        kind = "group" if self.communicates else "shards" if self.count > 1 else "single"
        return f"Processes({kind}, {self.index} of {self.count})"


def launched_processes(shard_index: int | None = None, num_shards: int | None = None,
                       cpu: bool = False) -> Processes:
    """The :class:`Processes` of this command: explicit ``shard_index``/``num_shards``
    (independent shards), else the group of ``accelerate launch`` / ``torchrun`` / mpirun when
    one of :data:`WORLD_SIZE_VARS` is > 1 (accelerate's ``PartialState``, gloo on ``cpu``),
    else one process. A launcher's count that accelerate cannot form into a group (mpirun
    with a GPU device, ...) is a :class:`ConfigError`."""
    if shard_index is not None or num_shards is not None:
        n = 1 if num_shards is None else num_shards
        return Processes(0 if shard_index is None else shard_index, n)
    var, world = launched_world_size()
    if world <= 1:
        _warn_lone_cpu_launch()
        return Processes()
    if var != "WORLD_SIZE" and not cpu:
        raise ConfigError(
            f"{var}={world}: processes started by mpirun (accelerate launch --cpu "
            "--mpirun_hostfile) form a CPU group; use --device cpu, or accelerate launch "
            "--multi_gpu (torchrun) for GPUs")
    try:
        from accelerate import PartialState
    except ImportError as exc:
        raise ConfigError(
            f"{var}={world}: a multi-process launch needs accelerate (pip install "
            "'hiergen[dist]'); or run independent processes with --shard-index/--num-shards"
        ) from exc
    state = PartialState(cpu=cpu)
    if state.num_processes != world:
        raise ConfigError(
            f"{var}={world}, but accelerate formed a group of {state.num_processes} "
            f"process(es) ({state.distributed_type}); start the processes with accelerate "
            "launch (or torchrun), or run independent ones with --shard-index/--num-shards")
    return Processes(state.process_index, state.num_processes, state)


def launched_world_size() -> tuple[str, int]:
    """``(variable, processes)`` of the launcher that started this process: the first of
    :data:`WORLD_SIZE_VARS` that is set, else ``("WORLD_SIZE", 1)``."""
    for name in WORLD_SIZE_VARS:
        if name in os.environ:
            return name, _env_int(name, 1)
    return "WORLD_SIZE", 1


def _warn_lone_cpu_launch() -> None:
    """Warn when ``accelerate launch --cpu --num_processes N`` (N > 1) started one process.

    Without ``--mpirun_hostfile``, accelerate's simple launcher (accelerate 1.x
    ``utils/launch.py: prepare_simple_launcher_cmd_env``) runs the command once, with
    ``ACCELERATE_USE_CPU`` and - as it does only for several processes or machines -
    ``MASTER_ADDR``, but no process count: the run is correct, on one process."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if use_cpu and "MASTER_ADDR" in os.environ:
        warnings.warn(
            "accelerate launch --cpu started a single process: for several CPU processes it "
            "needs mpirun, i.e. --mpirun_hostfile FILE (a line 'localhost:N'; mpirun from "
            "'pip install mpich'), or use accelerate launch --multi_gpu / torchrun with "
            "--device cpu; running on one process", RuntimeWarning, stacklevel=3)


def mixed_precision_dtype(dtype: str | None) -> str:
    """The autocast dtype: ``dtype`` when given, else the one of ``accelerate launch
    --mixed_precision`` (``ACCELERATE_MIXED_PRECISION``: fp16, bf16, no), else float32."""
    if dtype is not None:
        return dtype
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp not in MIXED_PRECISION:
        raise ConfigError(f"accelerate mixed precision {mp!r} is not supported here; use "
                          f"{', '.join(MIXED_PRECISION)} or --dtype")
    return MIXED_PRECISION[mp]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from exc
