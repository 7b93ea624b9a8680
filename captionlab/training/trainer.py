"""The one trainer for every strategy: token-level cross-entropy on the caption, SGD, cosine schedule (the paper's
defaults; Adam, warm-up and noam for the CLIP-Captioner's recipe; `objective: scst` for self-critical training, scst.py).

`train_run(run_dir, resume)` reads the run's config.yaml and writes the run folder (see
run_folder.py). It runs on the CPU, on one GPU, or under `accelerate launch` on several (DDP, or FSDP2
with `distributed: fsdp`, see fsdp.py): each process takes an interleaved share of every global batch,
and the loss is normalised by the caption tokens of the whole global batch, so N processes compute
exactly what one does. Under FSDP every forward and backward is collective, so every process runs as
many micro-batches as the busiest one (zero-weighted repeats), and checkpoints are gathered to rank 0.
Resume is exact: the epoch order depends only on (seed, epoch), and the trainable parameters,
optimizer buffers and position in the epoch come back from the last verified checkpoint.

The trainer works on groups of samples: one image's captions (epoch_unit image_captions) or one
sample each. Steps and micro-batches take whole groups, processes take interleaved groups, and with
`share_prefix` a micro-batch is packed (prefix_sharing.py: one row per image, its captions after one
copy of the image+prompt prefix), which computes the same loss and gradients with far fewer tokens.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from captionlab.training import fsdp
from captionlab.training.batching import IGNORE_INDEX, build_training_batch
from captionlab.training.checkpoint import (checkpoint_step, copy_checkpoint, latest_good_checkpoint,
                                            optimizer_tensors, save_checkpoint)
from captionlab.training.config import TrainConfig, load_run_config
from captionlab.training.master_weights import autocast_to, keep_float32_masters
from captionlab.training.run_folder import RunFolder
from captionlab.training.prefix_sharing import build_packed_batch, caption_token_count, packed_loss_sum
from captionlab.training.samples import ImageCache, caption_samples, epoch_groups, image_groups, split_steps


def cosine_lr(step: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """The paper's cosine schedule: lr_max at the first step, decaying to lr_min at the end."""
    progress = step / max(1, total_steps)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * progress))


def scheduled_lr(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based) under `config.lr_schedule`, after `warmup_steps` of
    linear warm-up. noam is Vaswani et al. 2017's eq. 3, d^-0.5 * min(s^-0.5, s * w^-1.5) with s = step + 1, as the
    M2 Transformer's train.py (aimagelab/meshed-memory-transformer, `lambda_lr`) trains the CLIP-Captioner's
    cross-entropy stage; written here with its peak, lr_max, reached at s = w (M2: 512^-0.5 * 10000^-0.5)."""
    warmup = config.warmup_steps
    if config.lr_schedule == "noam":
        s = step + 1
        return config.lr_max * min(s / warmup, math.sqrt(warmup / s))
    if step < warmup:
        return config.lr_max * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr_max
    return cosine_lr(step - warmup, total_steps - warmup, config.lr_max, config.lr_min)


def caption_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token-level cross-entropy over the caption tokens (next-token targets)."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the weights are ruined from that step on, so the run ends as failed,
    keeping the checkpoints written before it (nothing is written after), instead of training on and finishing
    with a NaN "best" checkpoint. The loss is reduced over every process, so all of them raise at the same step."""


def _check_finite(loss: float, what: str, config: TrainConfig) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the run diverged: {what} is {loss}. Launch it again with a lower lr_max (now {config.lr_max:g})"
            + ("" if config.max_grad_norm else " or with max_grad_norm set (gradient clipping)")
            + "; the checkpoints written before this are kept")


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode (no dropout) for a while, then train mode again: SCST samples without dropout."""
    model.eval()
    try:
        yield
    finally:
        model.train()


class _StopRequested:
    """SIGTERM/SIGINT set a flag; the trainer checkpoints at the end of the step and exits as 'stopped'."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def load_for_training(config: TrainConfig, device: torch.device):
    """(loaded model, strategy) with the strategy applied, for `config`.

    The loaded object may carry its own `build_batch(images, captions)` (the CLIP-Captioner does);
    otherwise LLaVA's prompt + caption batching is used.
    """
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import get_strategy, strategy_class

    cls = strategy_class(config.strategy)
    if not cls.uses_llava_base:  # it builds its own model (the CLIP-Captioner)
        return cls.load_for_training(config, device)
    spec = get_model_spec(config.model)
    settings = {}
    if cls.takes_lora_settings:
        settings = {"rank": config.lora_rank, "alpha": config.lora_alpha, "targets": config.lora_targets}
    strategy = get_strategy(config.strategy, **settings)
    loaded = load_model(spec, device=device, load_in_4bit=strategy.loads_4bit_base)
    torch.manual_seed(config.seed)
    loaded.model = strategy.apply(loaded.model, spec, loaded.tokenizer)
    loaded.model.train()
    return loaded, strategy


def load_split(config: TrainConfig, split: str, limit: int | None):
    from captionlab.data.datasets import load_records
    from captionlab.training.preflight import run_dataset

    records = load_records(run_dataset(config), split=split)
    return records[:limit] if limit else records


class Trainer:
    """State and steps of one run (one instance per process)."""

    def __init__(self, run_dir: Path, resume: bool):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.run = RunFolder(Path(run_dir))
        self.config = load_run_config(self.run.config_path)
        cpu = self.config.device == "cpu" or (self.config.device == "auto" and not torch.cuda.is_available())
        self.fsdp = self.config.distributed == "fsdp"
        self._check_launch()
        plugin = fsdp.make_plugin(cuda=not cpu) if self.fsdp else None
        # No buffer broadcast at every forward: the model's buffers (rotary frequencies...) are the same on
        # every process, and processes may run different numbers of micro-batches in a step or in validation
        # (groups of different sizes), so a per-forward collective would pair up wrongly between them.
        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
                                       fsdp_plugin=plugin, mixed_precision="bf16" if self.fsdp and not cpu else None)
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self._say_preparing(f"loading {self.config.model} for {self.config.strategy}")
        self.loaded, self.strategy = load_for_training(self.config, self.accelerator.device)
        if self.fsdp:
            self._shard(plugin)
        else:
            self.params = dict(self.strategy.trainable_parameters(self.loaded.model))
            self._keep_float32_masters()
            self.optimizer = self._make_optimizer()
            self.model = self.accelerator.prepare_model(self.loaded.model)
        self.names = {id(p): n for n, p in self.params.items()}
        if self.config.init_from and not resume:
            self._init_from(self.config.init_from)
        self._say_preparing(f"reading dataset {self.config.dataset} (the embedded world is generated on first use, "
                            "under a minute)")
        self.train_records = load_split(self.config, self.config.train_split, self.config.max_train_images)
        self.val_records = load_split(self.config, self.config.val_split, self.config.max_val_images)
        # steps per epoch, from each epoch's own split (image_captions steps hold whole images, so the
        # count can differ between epochs when images have different numbers of captions)
        self.epoch_steps = [len(self._epoch_plan(epoch)) for epoch in range(self.config.epochs)]
        self.total_steps = sum(self.epoch_steps)
        self.images = ImageCache()
        own_batch = getattr(self.loaded, "build_batch", None)  # the CLIP-Captioner brings its own
        self.build_batch = own_batch or self._llava_batch
        self.packed = bool(self.config.share_prefix) and own_batch is None
        self.scst = self.config.objective == "scst"
        if self.scst:
            self._setup_scst()
        self.state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best_val_loss": None, "best_epoch": None,
                      "val_losses": [], "initial_val_loss": None, "epoch_energy_j": [], "energy_j": 0.0, "elapsed_s": 0.0,
                      "energy_at_epoch_start_j": 0.0, "initial_val_energy_j": None}
        if resume:
            self._restore()
        from captionlab.training.energy import EnergyMeter

        self.energy = EnergyMeter(str(self.accelerator.device))
        self.energy.start()
        self.started = time.monotonic()
        self.stop = _StopRequested()
        if resume and self.state["epoch"] > 0 and self.state["step_in_epoch"] == 0:
            self._publish_epoch(self._resumed_from)  # a kill right after an epoch's checkpoint cut this short

    def _keep_float32_masters(self) -> None:
        """Trainable weights loaded in half precision (full fine-tuning on a GPU loads bf16) are kept in float32 and
        the forward runs under autocast to the model's dtype (`master_weights`)."""
        self.autocast_dtype, kept = keep_float32_masters(self.params.values())
        if kept:
            self.log(f"{sum(p.numel() for p, _ in kept):,} trainable parameters kept in float32 (master weights), "
                     f"the forward under {str(self.autocast_dtype).removeprefix('torch.')} autocast")

    def _autocast(self):
        return autocast_to(getattr(self, "autocast_dtype", None), self.accelerator.device.type)

    def _check_launch(self) -> None:
        """Reject, before anything is loaded, a distributed setting this launch cannot honour."""
        from captionlab.training.config import ConfigError

        if self.fsdp and not fsdp.launched_distributed():
            raise ConfigError("distributed: fsdp needs a distributed launch (a process group): run it under "
                              "`accelerate launch --multi_gpu --num_processes N -m train run ...` (N >= 2), or "
                              "`accelerate launch --use_fsdp --fsdp_version 2 --num_processes 1 ...` for one GPU; "
                              "or set distributed=ddp")
        if not self.fsdp and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise ConfigError("distributed: the run says ddp but accelerate launch was given FSDP (--use_fsdp or an "
                              "FSDP config file); set distributed=fsdp in the recipe, or launch with --multi_gpu")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.config.optimizer == "adam":
            return torch.optim.Adam(list(self.params.values()), lr=self.config.lr_max,
                                    betas=(0.9, self.config.adam_beta2), weight_decay=self.config.weight_decay)
        return torch.optim.SGD(list(self.params.values()), lr=self.config.lr_max,
                               momentum=self.config.momentum, weight_decay=self.config.weight_decay)

    def _shard(self, plugin) -> None:
        """FSDP2: shard the model; the optimizer ends up holding the sharded parameters (fsdp.py says how)."""
        from accelerate.utils import DistributedType

        layers = fsdp.set_layer_classes(plugin, self.loaded.model)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            # accelerate's FSDP2 wants the optimizer with the model: it swaps in the sharded parameters
            self.params = dict(self.strategy.trainable_parameters(self.loaded.model))
            self.model, self.optimizer = self.accelerator.prepare(self.loaded.model, self._make_optimizer())
            how = "accelerate"
        else:  # gloo: accelerate keeps FSDP off for MULTI_CPU; same wrapping, called directly
            self.model = fsdp.shard_on_cpu(self.accelerator, plugin, self.loaded.model)
            self.params = dict(self.strategy.trainable_parameters(self.model))
            self.optimizer = self._make_optimizer()
            how = "accelerate's fsdp2_prepare_model on a CPU mesh"
        self.loaded.model = self.model
        # the bookkeeping must name the parameters the optimizer steps: the sharded ones, owned by the model
        self.params = dict(self.strategy.trainable_parameters(self.model))
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in self.params.values()} or not all(fsdp.is_sharded(p) for p in self.params.values()):
            raise RuntimeError("FSDP: the optimizer does not hold the model's sharded parameters")
        self.log(f"FSDP2 ({how}): {self.world} process(es), units {', '.join(layers)}, "
                 f"mixed precision {self.accelerator.mixed_precision}")

    # --- state ---------------------------------------------------------------------------------
    def _restore(self) -> None:
        passed_over: list[str] = []
        found = latest_good_checkpoint(self.run.path, passed_over)
        for problem in passed_over if found is not None else []:
            self.log(f"checkpoint not used: {problem}")  # why the resume falls back to previous/
        if found is None:
            raise RuntimeError(f"{self.run.path}: no complete checkpoint to resume from")
        folder, (state, trainable, optimizer) = found
        self._resumed_from = folder
        with torch.no_grad():
            for name, tensor in trainable.items():  # full tensors; under FSDP each process keeps its shard
                self.params[name].copy_(fsdp.load_full_into(self.params[name], tensor))
        for name, tensor in optimizer.items():
            kind, param_name = name.split("::", 1)
            param = self.params[param_name]
            # Adam's step count is a scalar, kept as saved; buffers take the parameter's layout (its shard)
            self.optimizer.state[param][kind] = tensor if kind == "step" else fsdp.load_full_into(param, tensor)
        self.state.update({k: v for k, v in state.items() if k in self.state})
        # the steps after the checkpoint are trained again and logged anew: their old rows must go
        dropped = self.run.drop_metrics_after(self.state["step"]) if self.main else 0
        epoch, epochs = self.state["epoch"], self.config.epochs
        where = (f"the end of epoch {epoch} of {epochs}" if self.state["step_in_epoch"] == 0 and epoch > 0
                 else f"epoch {epoch + 1} of {epochs}")  # a checkpoint saved after an epoch is not in the next one
        self.log(f"resumed from {folder.name}/ at step {self.state['step']} ({where})"
                 + (f"; dropped {dropped} metrics row(s) written after it" if dropped else ""))

    def _init_from(self, source: str) -> None:
        """Start from another run's trainable weights (`init_from`): the same model and strategy, by name."""
        from captionlab.training.checkpoint import CheckpointError, initial_weights
        from captionlab.training.config import ConfigError

        try:
            folder, tensors = initial_weights(source)
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
        missing = sorted(set(self.params) - set(tensors))
        if missing:
            raise ConfigError(f"init_from: {folder} lacks {len(missing)} of this run's trainable tensors (e.g. "
                              f"{missing[0]}): it was trained with another model or strategy")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(fsdp.load_full_into(param, tensors[name]))
        self.log(f"initialised {len(self.params)} trainable tensors from {folder}")

    def _energy_j(self) -> float:
        return self.state["energy_j"] + self.energy.joules()

    def _elapsed_s(self) -> float:
        return self.state["elapsed_s"] + time.monotonic() - self.started

    def log(self, message: str) -> None:
        if self.main:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def checkpoint(self, name: str = "last") -> None:
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.model)
        if self.fsdp:
            # gathering is collective (every process takes part); rank 0 then writes the same format as ever
            whole = fsdp.full_state_dict(self.model)
            trainable = {n: whole[n] for n in self.params} if self.main else {}
            optimizer = {k: fsdp.full_tensor(v) for k, v in optimizer_tensors(self.optimizer, self.names, cpu=False).items()}
            save_artifact = lambda folder: self.strategy.save(model, folder, state_dict=whole)  # noqa: E731
        else:
            trainable = dict(self.params)
            optimizer = optimizer_tensors(self.optimizer, self.names) if self.main else {}
            save_artifact = lambda folder: self.strategy.save(model, folder)  # noqa: E731
        if not self.main:
            return
        state = {**self.state, "energy_j": self._energy_j(), "elapsed_s": self._elapsed_s(),
                 "total_steps": self.total_steps, "strategy": self.strategy.name}
        save_checkpoint(self.run.path / name, save_artifact=save_artifact, trainable=trainable,
                        optimizer=optimizer, state=state)

    # --- steps ---------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> list:
        """The optimizer steps of `epoch`: each a list of groups, depending only on (seed, epoch)."""
        groups = epoch_groups(self.train_records, self.config.epoch_unit, self.config.seed, epoch)
        return split_steps(groups, self.config.batch_size)

    def _batches(self, groups) -> list[dict]:
        """This process's micro-batches of a global batch of groups (interleaved groups per process).

        Packed: whole groups up to micro_batch_size captions, one row per image. Per caption: the
        captions in chunks of micro_batch_size (how they are cut does not change the step's gradient).
        """
        return self._build_batches(groups[self.rank::self.world])

    def _build_batches(self, local: list) -> list[dict]:
        size = self.config.micro_batch_size
        batches = []
        if self.packed:
            for chunk in split_steps(local, size):
                batch = build_packed_batch(self.loaded.processor, self.loaded.spec,
                                           [self.images.get(g[0].image_path) for g in chunk],
                                           [[s.caption for s in g] for g in chunk],
                                           self.strategy.prefix_slots, self.config.prompt)
                batches.append({k: v.to(self.accelerator.device) for k, v in batch.items()})
            return batches
        samples = [s for group in local for s in group]
        for start in range(0, len(samples), size):
            chunk = samples[start:start + size]
            batch = self.build_batch([self.images.get(s.image_path) for s in chunk], [s.caption for s in chunk])
            batches.append({k: v.to(self.accelerator.device) for k, v in batch.items()})
        return batches

    def _llava_batch(self, images, captions) -> dict:
        return build_training_batch(self.loaded.processor, self.loaded.spec, images, captions,
                                    self.strategy.prefix_slots, self.config.prompt)

    @staticmethod
    def _token_count(batch: dict) -> int:
        """Caption tokens of a micro-batch: the loss's denominator."""
        if "loss_targets" in batch:
            return caption_token_count(batch)
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def _global_sum(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item()) if self.world > 1 else value

    def _global_max(self, value: int) -> int:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.accelerator.device)
        return int(self.accelerator.gather(tensor).max().item())

    def _passes(self, batches: list[dict], groups) -> list[tuple[dict, bool]]:
        """(micro-batch, counts) pairs this process runs. Under FSDP every forward and backward gathers and
        reduce-scatters with the other processes, so all run the busiest one's number of passes: the missing
        ones repeat a micro-batch with zero weight. DDP runs its own batches (see train_step)."""
        passes = [(batch, True) for batch in batches]
        if self.fsdp and self.world > 1:
            total = self._global_max(len(batches))
            if len(passes) < total:
                filler = batches[0] if batches else self._build_batches(groups[:1])[0]
                passes += [(filler, False)] * (total - len(passes))
        return passes

    def _forward_loss_sum(self, batch: dict) -> torch.Tensor:
        with self._autocast():
            if "loss_targets" in batch:  # packed
                return packed_loss_sum(self.model, batch)[0]
            return caption_loss_sum(self._logits(batch), batch["labels"])

    def train_step(self, groups) -> dict:
        if self.scst:
            return self._scst_step(groups)
        batches = self._batches(groups)
        local_tokens = sum(self._token_count(b) for b in batches)
        global_tokens = max(1.0, self._global_sum(local_tokens))
        loss_sum = 0.0
        passes = self._passes(batches, groups)
        for index, (batch, counts) in enumerate(passes):
            # DDP all-reduces at the last micro-batch only; FSDP reduce-scatters at every one (sharded
            # gradients accumulate, and no process holds a whole model's gradients)
            sync = index == len(passes) - 1 or self.fsdp
            context = self.accelerator.no_sync(self.model) if (self.world > 1 and not sync) else contextlib.nullcontext()
            with context:
                micro = self._forward_loss_sum(batch)
                (micro * (self.world / global_tokens if counts else 0.0)).backward()
            if counts:
                loss_sum += float(micro.detach())
        if not passes and self.world > 1:
            # This process got no group (fewer groups than processes): it still runs one forward and a
            # zero-weighted backward through DDP, so that its gradient all-reduce pairs with the others'.
            dummy = self._build_batches(groups[:1])[0]
            (self._forward_loss_sum(dummy) * 0.0).backward()
        return {"loss": self._global_sum(loss_sum) / global_tokens, **self._optimizer_step()}

    def _optimizer_step(self) -> dict:
        lr = scheduled_lr(self.state["step"], self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # accelerate's clip is FSDP-aware: the norm of sharded gradients is reduced across the processes
        grad_norm = self.accelerator.clip_grad_norm_(list(self.params.values()), self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": lr, "grad_norm": float(fsdp.full_tensor(grad_norm))}

    # --- self-critical sequence training (objective: scst; scst.py) ------------------------------
    def _setup_scst(self) -> None:
        from captionlab.training import scst

        self.references = {r.image_id: r.references for r in self.train_records if r.references}
        self.reward = scst.CiderD(self.references.values())  # idf from the training references, fixed
        own = getattr(self.loaded, "sample_captions", None)  # the CLIP-Captioner brings its own sampler
        model = lambda: self.accelerator.unwrap_model(self.model)  # noqa: E731
        if own is not None:
            self.sample = lambda images, k, length, greedy: own(model(), images, k, length, greedy)
        else:
            self.sample = lambda images, k, length, greedy: scst.sample_llava(
                model(), self.loaded, self.strategy.prefix_slots, self.config.prompt, images, k, length, greedy)
        self.log(f"SCST: {self.config.scst_samples} samples per image, {self.config.scst_baseline} baseline, "
                 f"CIDEr-D idf from {len(self.references)} training images; validation score: -CIDEr-D of greedy "
                 "captions (logged as val_loss)")

    def _step_images(self, groups) -> list:
        """This process's images of a step (interleaved), each once: SCST rewards an image against all its references."""
        seen = {}
        for group in groups:
            for sample in group:
                seen.setdefault(sample.image_id, sample.image_path)
        return list(seen.items())[self.rank::self.world]

    def _scst_step(self, groups) -> dict:
        from captionlab.training import scst

        config, images = self.config, self._step_images(groups)
        global_samples = max(1.0, self._global_sum(len(images) * config.scst_samples))
        # a process with no image (fewer images than processes) still joins DDP's gradient all-reduce, at weight 0
        counted = bool(images)
        images = images or [next((s.image_id, s.image_path) for group in groups for s in group)]
        chunks = [images[i:i + config.micro_batch_size] for i in range(0, len(images), config.micro_batch_size)]
        loss_sum, totals = 0.0, {"reward_sum": 0.0, "baseline_sum": 0.0, "samples": 0.0}
        for index, chunk in enumerate(chunks):
            pictures = [self.images.get(path) for _, path in chunk]
            with _eval_mode(self.model):
                captions, advantages, stats = scst.rollout(
                    self.sample, self.reward, pictures, [self.references[i] for i, _ in chunk], config.scst_samples,
                    config.scst_baseline, config.scst_max_length)
            batch = self.build_batch([p for p in pictures for _ in range(config.scst_samples)], captions)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            last = index == len(chunks) - 1
            context = self.accelerator.no_sync(self.model) if (self.world > 1 and not last) else contextlib.nullcontext()
            with context:
                with self._autocast():
                    log_probs = scst.sequence_log_probs(self._logits(batch), batch["labels"])
                micro = scst.scst_loss_sum(log_probs, advantages.to(log_probs.device))
                (micro * (self.world / global_samples if counted else 0.0)).backward()
            if counted:
                loss_sum += float(micro.detach())
                totals = {k: totals[k] + stats[k] for k in totals}
        samples = max(1.0, self._global_sum(totals["samples"]))
        return {"loss": self._global_sum(loss_sum) / global_samples,
                "reward": self._global_sum(totals["reward_sum"]) / samples,
                "reward_baseline": self._global_sum(totals["baseline_sum"]) / samples, **self._optimizer_step()}

    @torch.no_grad()
    def _scst_validation(self) -> float:
        """-(mean CIDEr-D of the greedy captions of the validation images): lower is better, as a loss."""
        from captionlab.training import scst

        records = [r for r in self.val_records if r.references][self.rank::self.world]
        total = 0.0
        with _eval_mode(self.model):
            for start in range(0, len(records), self.config.micro_batch_size):
                chunk = records[start:start + self.config.micro_batch_size]
                total += scst.greedy_reward_sum(self.sample, self.reward, [self.images.get(r.image_path) for r in chunk],
                                                [r.references for r in chunk], self.config.scst_max_length)
        return -self._global_sum(total) / max(1.0, self._global_sum(len(records)))

    def _logits(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        return self.model(**inputs).logits

    @torch.no_grad()
    def validation_loss(self) -> float:
        if self.scst:
            return self._scst_validation()
        self.model.eval()
        samples = caption_samples(self.val_records)
        # packed: every caption of an image together (the same pairs, so the same loss)
        groups = image_groups(samples) if self.packed else [[s] for s in samples]
        loss_sum, tokens = 0.0, 0
        # one global batch at a time, as a training step: the micro-batches of a whole split, built and moved to the
        # device at once, would not fit (~34 GB of pixels for Karpathy val on LLaVA-1.5, ~170 GB on LLaVA-1.6)
        for chunk in split_steps(groups, self.config.batch_size):
            batches = self._batches(chunk)
            for batch, counts in self._passes(batches, chunk):
                loss = float(self._forward_loss_sum(batch))
                if counts:
                    loss_sum += loss
                    tokens += self._token_count(batch)
            del batches
        self.model.train()
        return self._global_sum(loss_sum) / max(1.0, self._global_sum(tokens))

    def _say_preparing(self, what: str) -> None:
        """What a run still queued is doing before its first step, for the Train tab and `train runs` (the
        launcher's 'launching' otherwise stays up through the model load and a first-use world)."""
        if self.main and self.run.read_status().get("state") != "running":
            self.run.write_status(message=what)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> str:
        config = self.config
        if self.main:
            self.run.write_status(state="running", pid=os.getpid(), total_steps=self.total_steps,
                                  step=self.state["step"], epoch=self.state["epoch"], message="",
                                  energy_method=self.energy.method, energy_label=self.energy.label)
        self.log(f"training {config.strategy} on {config.model}: {len(self.train_records)} images, "
                 f"{self.total_steps} steps of {config.batch_size} ({config.epoch_unit} epochs"
                 f"{', prefix sharing' if self.packed else ''}), "
                 f"{sum(p.numel() for p in self.params.values()):,} trainable parameters, {self.world} process(es), "
                 f"energy: {self.energy.method}")
        if self.state["step"] == 0 and self.state["initial_val_loss"] is None:
            # the untrained model's validation loss: the curve's starting point (zero-shot for adapters)
            self.state["initial_val_loss"] = self.validation_loss()
            _check_finite(self.state["initial_val_loss"], "the untrained model's validation loss", config)
            # the paper validates after each epoch only: this extra pass is not counted in epoch 1's energy
            energy_now = self._energy_j()
            self.state["initial_val_energy_j"] = self._global_sum(energy_now - self.state["energy_at_epoch_start_j"])
            self.state["energy_at_epoch_start_j"] = energy_now
            if self.main:
                self.run.append_metrics({"event": "val", "epoch": 0, "val_loss": self.state["initial_val_loss"],
                                         "step": 0, "energy_j": self._energy_j(), "elapsed_s": self._elapsed_s(),
                                         "best": False})
            self.log(f"initial val loss {self.state['initial_val_loss']:.4f}")
        while self.state["epoch"] < config.epochs:
            epoch = self.state["epoch"]
            plan = self._epoch_plan(epoch)
            while self.state["step_in_epoch"] < len(plan):
                step_groups = plan[self.state["step_in_epoch"]]
                tick = time.monotonic()
                metrics = self.train_step(step_groups)
                _check_finite(metrics["loss"], f"the training loss at step {self.state['step'] + 1}", config)
                self.state["step"] += 1
                self.state["step_in_epoch"] += 1
                captions = sum(len(g) for g in step_groups)
                row = {"step": self.state["step"], "epoch": epoch + self.state["step_in_epoch"] / len(plan),
                       **metrics, "samples_per_s": captions / max(1e-9, time.monotonic() - tick),
                       "elapsed_s": self._elapsed_s(), "energy_j": self._energy_j()}
                if self.main:
                    self.run.append_metrics(row)
                    self.run.write_status(step=self.state["step"], epoch=row["epoch"])
                # every process must agree to stop at the same step: the checkpoint is collective
                stop = self.stop.requested if self.world == 1 else self._global_max(int(self.stop.requested)) > 0
                if self.state["step"] % config.checkpoint_every_steps == 0 or stop:
                    self.checkpoint()
                if stop:
                    self.log(f"stop requested: checkpointed at step {self.state['step']}")
                    return "stopped"
            self._end_epoch(epoch)
        return "finished"

    def _end_epoch(self, epoch: int) -> None:
        val_loss = self.validation_loss()
        _check_finite(val_loss, f"the validation loss after epoch {epoch + 1}", self.config)
        energy_now = self._energy_j()
        # each process meters its own device; the run's energy is the sum over processes
        self.state["epoch_energy_j"].append(self._global_sum(energy_now - self.state["energy_at_epoch_start_j"]))
        self.state["energy_at_epoch_start_j"] = energy_now
        self.state["val_losses"].append(val_loss)
        improved = self.state["best_val_loss"] is None or val_loss < self.state["best_val_loss"]
        if improved:
            self.state["best_val_loss"], self.state["best_epoch"] = val_loss, epoch + 1
        self.state["epoch"] = epoch + 1
        self.state["step_in_epoch"] = 0
        self.checkpoint()
        self._publish_epoch(self.run.last_dir)
        self.log(f"epoch {epoch + 1}: val loss {val_loss:.4f}" + (" (best)" if improved else ""))

    def _publish_epoch(self, checkpoint: Path) -> None:
        """What follows an epoch's checkpoint (`checkpoint`, saved at its end), from the state it holds: best/ when
        the epoch improved the validation loss, the validation row, status and energy. Each part is skipped where
        already done, so resuming from that checkpoint runs it again: a kill between the checkpoint and these
        would otherwise lose them for good (best/ above all, unless a later epoch did better)."""
        if not self.main:
            return
        epoch, step = self.state["epoch"], self.state["step"]
        improved = self.state["best_epoch"] == epoch
        if improved and checkpoint_step(self.run.best_dir) != step:
            copy_checkpoint(checkpoint, self.run.best_dir)
        if not any(row.get("event") == "val" and row.get("epoch") == epoch for row in self.run.read_metrics()):
            self.run.append_metrics({"event": "val", "epoch": epoch, "val_loss": self.state["val_losses"][-1],
                                     "step": step, "energy_j": self._energy_j(), "elapsed_s": self._elapsed_s(),
                                     "best": improved})
        self.run.write_status(best_epoch=self.state["best_epoch"], best_val_loss=self.state["best_val_loss"],
                              epoch=epoch)
        self.write_energy()

    def close(self) -> None:
        """Leave the process group together: a process that exits while gloo's threads still run with the
        other one's aborts ("terminate called without an active exception", seen under FSDP on the CPU)."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()

    def write_energy(self) -> None:
        from captionlab import atomic
        from captionlab.training.energy import JOULES_PER_KWH, summarize_energy

        summary = summarize_energy(self.state["epoch_energy_j"], self.state["best_epoch"], **self.energy.describe())
        summary.update({"trainable_parameters": sum(p.numel() for p in self.params.values()),
                        "strategy": self.config.strategy, "model": self.config.model, "processes": self.world})
        initial = self.state.get("initial_val_energy_j")
        if initial is not None:
            summary["initial_validation_kwh"] = initial / JOULES_PER_KWH
            summary["initial_validation_note"] = ("the untrained model's validation pass (the loss curve's starting "
                                                  "point), which the paper's protocol does not run: not in the epochs")
        atomic.write_json(self.run.energy_path, summary)


def train_run(run_dir: Path, resume: bool = False) -> int:
    """Train the run in `run_dir`; returns a process exit code and leaves status.json final."""
    run = RunFolder(Path(run_dir))
    try:
        trainer = Trainer(run.path, resume)
        outcome = trainer.fit()
    except TrainingDiverged as exc:  # the run's own outcome, not a bug: said in one line, no traceback
        trainer.log(str(exc))
        if trainer.main:
            run.write_status(state="failed", message=str(exc), pid=os.getpid())
        trainer.close()
        return 1
    except Exception as exc:
        traceback.print_exc()
        run.write_status(state="failed", message=f"{type(exc).__name__}: {exc}", pid=os.getpid())
        return 1
    if trainer.main:
        run.write_status(state=outcome, message="" if outcome == "finished" else "stopped on request; resumable",
                         pid=os.getpid())
        trainer.log(f"run {outcome}")
    trainer.close()
    return 0
