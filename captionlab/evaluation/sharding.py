"""One benchmark split captioned by the processes of a distributed launch, and scored once.

    accelerate launch --multi_gpu --num_processes 4 -m captionlab evaluate --model M --strategy S --dataset coco

Invariant: N processes make exactly the captions one process makes, and the main process writes them to the
same predictions.jsonl, in the order one process writes a fresh run (bucketed by image shape), then scores them
once. Only each line's `seconds` and `joules` (measurements of the batch that made it) differ between runs, as
they do between two runs of one process.

How:
- The main process applies the settings check of `generation` (a file made with other settings, and its shards,
  moved aside), reads back every caption already written (predictions.jsonl, and every shard of an earlier launch,
  whatever its process count), orders the rest as one process would (`generation.bucket_order`) and cuts them into
  the batches one process would caption. Batch i goes to process i mod N: the shares are balanced, also when
  resuming, and each batch is one a single process would have made (the same images padded together, so the
  same captions to the last bit).
- Each process captions its batches into its own shard, `predictions.jsonl.shards/rank-<R>.jsonl`, through
  `generation.generate_predictions`: one line per image, appended and fsynced batch by batch, so a process killed
  mid-way loses at most the batch it was making.
- The processes agree on the outcome (one failure fails every process, with the failing one's message, so no
  process waits for a partner that is gone), then the main process gathers every line into predictions.jsonl
  (atomically) and removes the shards. `generate_predictions` returns the Predictions on the main process and
  None on the others: only the main process scores and records.

The shards are files on the launch's file system: a multi-node launch needs the output folder on a shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captionlab import atomic
from captionlab.data.records import CaptionRecord
from captionlab.evaluation import generation
from captionlab.evaluation.targets import EvaluationError

SHARDS_SUFFIX = ".shards"
# a process's failure, raised on every process as the error the evaluator already turns into a message
_FAILURE_KINDS = {"GenerationError": generation.GenerationError, "EvaluationError": EvaluationError}


def distributed_launch() -> bool:
    """Whether this process is one of several started by a distributed launcher (accelerate launch / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True outside a distributed launch, and in its process of global rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


class ProcessGroup:
    """The launch's processes, through accelerate's PartialState (NCCL on GPUs, gloo on the CPU), for the few
    small objects they exchange: the plan, and how each process's share went."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str:
        return str(self.state.device)

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def broadcast(self, value):
        """The main process's `value`, on every process."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's `value`, by rank, on every process."""
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, value)
        return out


_group: ProcessGroup | None = None


def process_group(device: str | None = None) -> ProcessGroup | None:
    """This launch's process group (set up on first use), or None outside a distributed launch."""
    global _group
    if not distributed_launch():
        return None
    if _group is None:
        import torch

        _group = ProcessGroup(cpu=device == "cpu" or not torch.cuda.is_available())
    return _group


def process_device(device: str | None) -> str | None:
    """The device this process captions on: under a distributed launch each process takes its own GPU
    (cuda:LOCAL_RANK) or the CPU; a single GPU named for all of them is refused (ValueError)."""
    if not distributed_launch():
        return device
    group = process_group(device)
    if device is None or device in ("cuda", "cpu") or device == group.device:
        return "cpu" if device == "cpu" else group.device
    raise ValueError(f"under a distributed launch each process captions on its own GPU ({group.device} here); "
                     f"leave --device out (or give cpu / cuda) instead of {device!r}")


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The body runs on the main process first, then on the others (a world generated once, then read)."""
    group = process_group()
    if group is None:
        yield
        return
    if not group.main:
        group.barrier()
    yield
    if group.main:
        group.barrier()


def shards_dir(out_jsonl: Path) -> Path:
    return out_jsonl.with_name(out_jsonl.name + SHARDS_SUFFIX)


def shard_path(out_jsonl: Path, rank: int) -> Path:
    return shards_dir(out_jsonl) / f"rank-{rank}.jsonl"


@dataclass
class _Plan:
    """What the main process decided: each process's image ids, in order, and what the others need to know."""

    shares: list[list[str]]
    skipped: list[generation.SkippedImage] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # every captionable image, in one process's order
    resumed: int = 0
    stale_file: Path | None = None
    torn_lines: int = 0


def generate_predictions(captioner, records: Sequence[CaptionRecord], out_jsonl: Path, batch_size: int,
                         progress: Callable[[int, int], None] | None = None, *, skip_broken: bool = False,
                         meta: dict | None = None, energy_meter=None) -> generation.Predictions | None:
    """`generation.generate_predictions`, shared out over the processes of a distributed launch (see the module
    docstring); outside one, exactly that function. Returns None on every process but the main one."""
    group = process_group()
    if group is None:
        return generation.generate_predictions(captioner, records, out_jsonl, batch_size, progress=progress,
                                               skip_broken=skip_broken, meta=meta, energy_meter=energy_meter)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out_jsonl = Path(out_jsonl)
    selected = _first_of_each_id(records)
    plan = _agree(group, lambda: _plan(selected, out_jsonl, batch_size, group.world, skip_broken, meta))
    outcome = _caption_share(group, captioner, selected, plan, out_jsonl, batch_size, progress, skip_broken,
                             energy_meter)
    outcomes = group.gather(outcome)
    failed = next((o for o in outcomes if "error" in o), None)
    if failed is not None:
        kind, message = failed["error"]
        raise _FAILURE_KINDS.get(kind, RuntimeError)(f"process {failed['rank']} of {group.world}: {message}")
    if not group.main:
        return None
    skipped = list(plan.skipped) + [generation.SkippedImage(**s) for o in outcomes for s in o["skipped"]]
    return _merge(out_jsonl, selected, plan, skipped, generated=sum(o["generated"] for o in outcomes))


def _first_of_each_id(records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
    seen: set[str] = set()
    return [r for r in records if not (r.image_id in seen or seen.add(r.image_id))]


def _agree(group: ProcessGroup, make_plan: Callable[[], _Plan]) -> _Plan:
    """The main process's plan on every process, or its error raised on every process."""
    answer = None
    if group.main:
        try:
            answer = make_plan()
        except generation.GenerationError as exc:
            answer = ("error", str(exc))
    answer = group.broadcast(answer)
    if isinstance(answer, tuple):
        raise generation.GenerationError(answer[1])
    return answer


def _plan(selected: list[CaptionRecord], out_jsonl: Path, batch_size: int, world: int, skip_broken: bool,
          meta: dict | None) -> _Plan:
    """Runs on the main process, before any process writes: the settings check, what is done, who does the rest."""
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    moved = generation.Predictions()
    if meta is not None and _settings_changed(out_jsonl, meta):
        _move_shards_aside(out_jsonl)
    generation.prepare_file(out_jsonl, meta, moved)
    done, torn = _written_lines(out_jsonl)
    shapes: dict[str, tuple[int, int]] = {}
    skipped: list[generation.SkippedImage] = []
    for record in selected:
        try:
            shapes[record.image_id] = generation.image_shape(record.image_path)
        except generation.GenerationError as exc:
            if record.image_id in done:  # captioned before its file went: its caption still counts
                shapes[record.image_id] = (0, 1)
            elif not skip_broken:
                raise
            else:
                skipped.append(generation.SkippedImage(record.image_id, str(record.image_path), str(exc)))
    captionable = [r for r in selected if r.image_id in shapes]
    todo = generation.bucket_order([r for r in captionable if r.image_id not in done], shapes)
    shares: list[list[str]] = [[] for _ in range(world)]
    for number, start in enumerate(range(0, len(todo), batch_size)):
        shares[number % world] += [r.image_id for r in todo[start:start + batch_size]]
    order = [r.image_id for r in generation.bucket_order(captionable, shapes)]
    return _Plan(shares=shares, skipped=skipped, order=order, resumed=sum(r.image_id in done for r in selected),
                 stale_file=moved.stale_file, torn_lines=torn)


def _settings_changed(out_jsonl: Path, meta: dict) -> bool:
    meta_path = out_jsonl.with_name(out_jsonl.name + generation.META_SUFFIX)
    try:
        existing = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        existing = None
    return existing != json.loads(json.dumps(meta, default=str))


def _move_shards_aside(out_jsonl: Path) -> None:
    """Shards made with other settings join the stale predictions: kept, never mixed in."""
    folder = shards_dir(out_jsonl)
    if folder.is_dir():
        stale = folder.with_name(folder.name + generation.STALE_SUFFIX)
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(folder, stale)


def _written_lines(out_jsonl: Path) -> tuple[dict[str, bytes], int]:
    """(image id -> its complete JSON line, unreadable lines) over predictions.jsonl and every shard of an earlier
    launch; the line rules are `generation.read_predictions`'s (a later line for an image wins, shards last)."""
    lines: dict[str, bytes] = {}
    torn = 0
    folder = shards_dir(out_jsonl)
    shards = sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []
    for path in [out_jsonl, *shards]:
        readable, _, bad = generation.read_predictions(path)
        torn += bad
        if not readable:
            continue
        data = path.read_bytes()
        for raw in data[:data.rfind(b"\n") + 1].split(b"\n"):
            try:
                row = json.loads(raw.decode("utf-8")) if raw.strip() else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(row, dict) and row.get("image_id") in readable and isinstance(row.get("caption"), str):
                lines[row["image_id"]] = raw + b"\n"
    return lines, torn


def _caption_share(group: ProcessGroup, captioner, selected: list[CaptionRecord], plan: _Plan, out_jsonl: Path,
                   batch_size: int, progress, skip_broken: bool, energy_meter) -> dict:
    """Caption this process's share into its shard; how it went, as a small picklable dict (never raises)."""
    by_id = {r.image_id: r for r in selected}
    share = [by_id[image_id] for image_id in plan.shares[group.rank]]
    outcome: dict = {"rank": group.rank, "generated": 0, "skipped": []}
    if not share:
        return outcome
    try:
        made = generation.generate_predictions(captioner, share, shard_path(out_jsonl, group.rank), batch_size,
                                               progress=progress if group.main else None, skip_broken=skip_broken,
                                               energy_meter=energy_meter)
    except Exception as exc:  # every process must hear of it, or the others wait for this one forever
        outcome["error"] = (type(exc).__name__, str(exc))
        return outcome
    outcome["generated"] = made.generated
    outcome["skipped"] = [s.__dict__ for s in made.skipped]
    return outcome


def _merge(out_jsonl: Path, selected: list[CaptionRecord], plan: _Plan, skipped: list[generation.SkippedImage],
           generated: int) -> generation.Predictions:
    """Every line into predictions.jsonl in one process's order (atomically), the shards removed; the result as
    `generation.generate_predictions` returns it."""
    lines, _ = _written_lines(out_jsonl)
    order = [image_id for image_id in plan.order if image_id in lines]
    ordered = set(order)
    order += [image_id for image_id in lines if image_id not in ordered]  # kept: images of an earlier, longer run
    atomic.write_bytes(out_jsonl, b"".join(lines[image_id] for image_id in order))
    shutil.rmtree(shards_dir(out_jsonl), ignore_errors=True)
    parsed, _, _ = generation.read_predictions(out_jsonl)
    predictions = generation.Predictions()
    for record in selected:
        if record.image_id in parsed:
            predictions[record.image_id] = parsed[record.image_id].caption
    kept = [parsed[image_id] for image_id in predictions]
    predictions.resumed, predictions.generated = plan.resumed, generated
    predictions.skipped, predictions.stale_file, predictions.torn_lines = skipped, plan.stale_file, plan.torn_lines
    generation.add_totals(predictions, kept)
    return predictions
