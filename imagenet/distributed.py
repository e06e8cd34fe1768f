"""The processes of one image run: one process, independent shards, or a process group started
by ``accelerate launch`` (or ``torchrun``).

:class:`Processes` is what :func:`~hiergen.imagenet.forward_backward.run_forward_backward` and
:func:`~hiergen.imagenet.probe.run_probe` use to split their work, gather what needs gathering
and let the main process write the single results:

* under ``accelerate launch`` (``WORLD_SIZE`` > 1): accelerate's ``PartialState`` -
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
from collections.abc import Iterator, Sequence
from typing import Any

from hiergen.imagenet.data import shard
from hiergen.models.errors import ConfigError

#: ``accelerate launch --mixed_precision`` values and the autocast dtype names they mean
MIXED_PRECISION = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


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
    (independent shards), else the group of ``accelerate launch`` / ``torchrun`` when
    ``WORLD_SIZE`` > 1 (accelerate's ``PartialState``, gloo on ``cpu``), else one process."""
    if shard_index is not None or num_shards is not None:
        n = 1 if num_shards is None else num_shards
        return Processes(0 if shard_index is None else shard_index, n)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Processes()
    try:
        from accelerate import PartialState
    except ImportError as exc:
        raise ConfigError(
            f"WORLD_SIZE={world}: a multi-process launch needs accelerate (pip install "
            "'hiergen[dist]'); or run independent processes with --shard-index/--num-shards"
        ) from exc
    state = PartialState(cpu=cpu)
    return Processes(state.process_index, state.num_processes, state)


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
