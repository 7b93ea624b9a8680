"""A decoding step replayed as CUDA graphs: captured lazily, one per key, all in one shared memory pool.

Why. Replaying a captured step costs one launch instead of one per operation (32 decoder layers launched op by
op). A graph freezes the shapes it captured, so a step whose shapes never change needs one graph (the masked
step over the whole preallocated cache: key "masked"), and a step whose shapes grow needs one per shape (the
exact-length step attends to one more token each step: key ("exact-length", written length)).

Memory. The graphs share one pool (`torch.cuda.graph_pool_handle()`), so a later capture may reuse what an
earlier one freed: N graphs then hold about one step's working memory, not N. That is safe here because the
graphs run one at a time on one stream, read only buffers allocated outside the pool (the cache, the fed token
and position), and each graph's output is copied out right after its own replay (`run` returns a clone), so no
replay can overwrite something still to be read.

Failure. Any capture failure (an operation that cannot be captured, out of memory while capturing) is recorded
in `error`, the graphs are dropped, and every later step runs eagerly: the same values, op by op.

    graphs = StepGraphs()
    logits = graphs.run(key, step, device)   # step() -> Tensor, safe to run more than once with the same result
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

Step = Callable[[], torch.Tensor]


def new_graph_pool():
    """A memory pool the graphs of one `StepGraphs` share."""
    return torch.cuda.graph_pool_handle()


def capture_cuda_graph(step: Step, pool) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture `step()` as a CUDA graph in `pool`, after two eager warm-up runs on a side stream (library handles,
    kernel plans built for these shapes), as `torch.cuda.graphs`' documentation asks. Returns (replay, output):
    `replay()` reruns the captured kernels, which refill `output` (it holds nothing before the first replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = step()
    return graph.replay, output


class StepGraphs:
    """The captured graphs of one batch shape's decoding steps, by key."""

    def __init__(self):
        self._graphs: dict[Hashable, tuple[Callable[[], None], torch.Tensor]] = {}
        self._pool = None
        self.error: str | None = None  # why the steps run eagerly, once a capture has failed

    @property
    def keys(self) -> list[Hashable]:
        """The keys captured so far, in capture order."""
        return list(self._graphs)

    def run(self, key: Hashable, step: Step, device: torch.device) -> torch.Tensor:
        """`step()`'s output: by replaying the graph captured for `key` (capturing it first if new), or eagerly
        once a capture has failed."""
        if self.error is not None:
            return step()
        captured = self._graphs.get(key)
        if captured is None:
            try:
                if self._pool is None:
                    self._pool = new_graph_pool()
                captured = self._graphs[key] = capture_cuda_graph(step, self._pool)
            except Exception as error:  # noqa: BLE001 - any capture failure: eager steps from now on, said in `error`
                self.error = f"{type(error).__name__}: {error}"
                self._graphs.clear()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return step()
        replay, output = captured
        replay()
        return output.clone()
