"""fastq.pipeline and fastq.Stage: stages of worker processes joined by fastq
queues, results back in the parent (see fastq._workers for the machinery)."""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator, List, Optional

from ._pool import _context
from ._workers import _Engine, outputs

__all__ = ["Stage", "pipeline", "Pipeline"]

# Each queue's bytes.  Smaller than a Pool's (whose queues are made once): a
# pipeline makes its queues on every run, and reserving (fallocate, zeroing)
# then freeing 16 MiB cost 2.25 ms of CPU a queue against 0.55 ms at 4 MiB,
# 7 ms of the ~40 ms the parent spends on 400k small items; a smaller ring
# also faults in fewer fresh pages on its first lap (100 x 1 MiB arrays through
# two stages: 124 ms of CPU at 4 MiB against 178 ms at 16 MiB).  4 MiB still
# carries a 1 MiB array in one message (at most capacity // 2).
DEFAULT_CAPACITY = 4 << 20


class Stage:
    """One stage of a :func:`pipeline`: ``fn`` run by ``workers`` processes.

    Parameters
    ----------
    fn : callable
        Called with each item; its return value goes to the next stage.  With
        ``flat=True`` it returns an iterable (a generator, say) and each of its
        items goes on, in order.
    workers : int
        Processes running this stage.
    ordered : bool, optional
        Whether this stage keeps input order; ``None`` takes the pipeline's.  The
        output is in input order when every stage is ordered.
    flat : bool
        ``fn`` emits zero or more items per input (collected per batch: one input's
        outputs must fit in memory and in one message of the queue).
    max_retries : int, optional
        Re-runs of an item whose worker died before :class:`fastq.WorkerLost`
        (default 3).
    """

    def __init__(self, fn: Callable, workers: int = 1, ordered: Optional[bool] = None,
                 flat: bool = False, max_retries: Optional[int] = None):
        if not callable(fn):
            raise TypeError(f"a stage needs a callable, not {fn!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ValueError("max_retries must be an int >= 0 or None")
        self.fn, self.workers, self.ordered = fn, workers, ordered
        self.flat, self.max_retries = bool(flat), max_retries

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"Stage({name}, workers={self.workers}{', flat=True' if self.flat else ''})"


class Pipeline:
    """The running pipeline returned by :func:`pipeline`: an iterator over the last
    stage's outputs and a context manager (leaving it stops every worker and
    removes the queues).

    An exception raised by a stage's function is re-raised here, at its item's
    place in the output (with the worker's traceback as ``__cause__``), and the
    pipeline stops; so does :class:`fastq.WorkerLost`, Ctrl-C, and an error of
    the input iterable.
    """

    def __init__(self, iterable: Iterable[Any], stages: List[Stage], ordered: bool,
                 progress: bool, context: Any, capacity: int):
        self._ordered = all(ordered if s.ordered is None else s.ordered for s in stages)
        self._bars: Optional[list] = None
        specs = [(s.fn, s.workers, s.flat, 3 if s.max_retries is None else s.max_retries)
                 for s in stages]
        self._stages = stages
        self._engine = _Engine(specs, _context(context), capacity)
        # read by the consumer only: its window opens as it consumes (see new_job)
        job = self._job = self._engine.new_job(self._ordered, background=False)
        self._it = outputs(job, self.close)
        self._progress_stop = threading.Event()
        if progress:
            self._start_progress()
        self._engine.feed(job, iterable, None)

    @property
    def reruns(self) -> int:
        """Batches run again because their worker died."""
        return self._engine.reruns

    def pids(self) -> List[int]:
        """Every worker process's pid, now."""
        return self._engine.pids()

    def __iter__(self) -> Iterator[Any]:
        return self._it

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        """Stop every worker now and remove the queues (idempotent)."""
        self._progress_stop.set()
        self._engine.terminate()
        bars, self._bars = self._bars, None
        if bars:
            self._update_bars(bars)
            for b in bars:
                b.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- progress (tqdm, an optional dependency: pip install 'fastq-ipc[progress]')
    def _start_progress(self) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            raise ImportError("progress=True needs tqdm: pip install 'fastq-ipc[progress]'") \
                from None
        bars = []
        for i, s in enumerate(self._stages):
            name = getattr(s.fn, "__name__", "stage")
            bars.append(tqdm(desc=f"stage {i} {name}", unit="it", position=i, leave=True,
                             dynamic_ncols=True))
        self._bars = bars
        threading.Thread(target=self._progress_loop, name="fastq-progress", daemon=True).start()

    def _update_bars(self, bars: list) -> None:
        eng = self._engine
        for i, (b, n) in enumerate(zip(bars, eng.stage_done())):
            try:
                depth = eng.queues[i].qsize() if not eng.queues[i].closed else 0
            except Exception:
                depth = 0
            b.set_postfix_str(f"queue {depth}", refresh=False)
            b.update(n - b.n)

    def _progress_loop(self) -> None:
        while not self._progress_stop.wait(0.1):
            bars = self._bars
            if bars is None:
                return
            try:
                self._update_bars(bars)
            except Exception:
                return


def pipeline(iterable: Iterable[Any], *stages: Any, ordered: bool = True,
             progress: bool = False, context: Any = None,
             capacity: int = DEFAULT_CAPACITY) -> Pipeline:
    """Run ``iterable`` through stages of worker processes; iterate the result.

    Each stage (a :class:`Stage`, or a plain function for ``Stage(fn)``) is a set of
    processes that take batches of items from a fastq queue and put their outputs
    on the next stage's queue, never through the parent.  Work is batched
    adaptively; memory stays bounded however long the input (the input is read a
    bounded window ahead of the consumer, and each queue holds ``capacity``
    bytes).

    Parameters
    ----------
    iterable : iterable
        The input; read lazily, in a thread of the parent.
    *stages : Stage or callable
    ordered : bool
        Yield in input order (default), or as soon as each batch is ready.
    progress : bool
        Show a live bar per stage (items done, rate, queue depth); needs tqdm.
    context : multiprocessing context or str, optional
        ``"fork"``, ``"spawn"`` or ``"forkserver"`` (default: multiprocessing's).
    capacity : int
        Bytes of each queue between stages (4 MiB); a message holds at most
        half of it (larger outputs travel in parts, larger inputs one per message).

    Examples
    --------
    >>> with fastq.pipeline(range(10), fastq.Stage(square, workers=2), str) as p:
    ...     print(list(p))
    """
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    st = [s if isinstance(s, Stage) else Stage(s) for s in stages]
    return Pipeline(iterable, st, ordered, progress, context, capacity)
