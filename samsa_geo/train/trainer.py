import math
import os
import os.path as osp
import signal
import sys
import threading
import time
import warnings
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from samsa_geo.train._metrics_file import MetricsFile
from samsa_geo.train._resume import (RESUME_KEYS, capture_rank_state,
                                     gather_rank_states, restore_rank,
                                     resume_position)
from samsa_geo.train._run_log import RunLog
from samsa_geo.train._trainer_args import check_trainer_arguments
from samsa_geo.train.checkpoint import load_checkpoint, save_checkpoint
from samsa_geo.train.distributed import (all_gather_outputs, all_reduce_max,
                                         all_reduce_sum, barrier,
                                         init_distributed)
from samsa_geo.train.distributed_eval_sampler import DistributedEvalSampler
from samsa_geo.train.loader import move_to_device
from samsa_geo.train.run_folder import (RunFolderLock, prepare_run_folder,
                                        remove_stale_temporaries)
from samsa_geo.train.seed import (enable_determinism, get_rng_state,
                                  seed_everything, set_rng_state)
from samsa_geo.train.task import Task
from samsa_geo.train.warmup_cosine_lr import WarmupCosineLR

_AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


class Trainer:
    r"""The one training loop of samsa_geo: AdamW (fused on CUDA) with linear
    warm-up and cosine decay (per step), gradient clipping, optional
    :obj:`torch.compile`, AMP, DDP through torchrun, exact resume, and a run
    folder.

    Everything specific to a benchmark lives in the :class:`Task`
    (loss, per-item outputs, metrics); the trainer never looks inside a model
    or a batch except to move it to the device.

    The run folder :obj:`out_dir` receives, from rank 0 only:
    :obj:`last.pt` (every epoch and on SIGINT/SIGTERM, written atomically),
    :obj:`best.pt` (best :obj:`monitor` so far), :obj:`log.csv` (one row per
    epoch: :obj:`epoch, lr, train_loss, time, val_*`), TensorBoard events in
    :obj:`tensorboard/` when installed, and :obj:`metrics.json` (summary,
    updated by :meth:`evaluate` for other splits, which records the
    checkpoint each split was evaluated with; results from :obj:`best.pt`
    are dropped when a later epoch replaces it).

    Rank 0 holds a :class:`~samsa_geo.train.run_folder.RunFolderLock` on
    :obj:`out_dir` from construction to :meth:`close` (or the end of the
    process): a second run in the same folder fails at once, naming the
    first. Temporary files left by a killed writer are removed at
    construction. :meth:`fit` starts a new run in a folder that holds one
    only after moving the old run to :obj:`{out_dir}.old-{time}` (or
    deleting it with :obj:`overwrite=True`), and refuses :obj:`resume` when
    :obj:`best.pt` exists without :obj:`last.pt`.

    On SIGINT or SIGTERM the current step finishes, :obj:`last.pt` is written
    (mid-epoch; :obj:`resume=True` skips the batches already seen), previous
    handlers are restored and the process exits with status
    :obj:`128 + signum`. A second SIGINT interrupts at once.

    Args:
        model (torch.nn.Module): The model (moved to :obj:`device`).
        task (Task): Loss, per-item evaluation outputs and metrics.
        out_dir (str): Run folder.
        epochs (int): Number of epochs.
        lr (float, optional): Peak learning rate. (default: :obj:`1e-3`)
        weight_decay (float, optional): AdamW weight decay, applied to
            parameters with two or more dimensions only (not to biases and
            normalisation scales). (default: :obj:`0.05`)
        warmup_steps (int, optional): Linear warm-up steps. (default: :obj:`0`)
        min_lr (float, optional): Learning rate at the end of the cosine.
            (default: :obj:`0.0`)
        clip_grad (float, optional): Max global gradient norm; :obj:`None`
            disables clipping. (default: :obj:`2.0`)
        amp (str, optional): :obj:`None`, :obj:`'bf16'` (autocast) or
            :obj:`'fp16'` (autocast and :class:`torch.amp.GradScaler`).
            (default: :obj:`None`)
        compile (bool, optional): Wrap the model with :func:`torch.compile`.
            (default: :obj:`False`)
        device (str or torch.device, optional): :obj:`cuda:LOCAL_RANK` when
            CUDA is available, else CPU, if :obj:`None`. (default: :obj:`None`)
        seed (int, optional): Seed (rank :math:`r` uses :obj:`seed + r`).
            (default: :obj:`0`)
        deterministic (bool, optional): Use deterministic algorithms only.
            (default: :obj:`False`)
        monitor (str, optional): Validation metric selecting :obj:`best.pt`,
            named with its :obj:`val_` prefix. (default: :obj:`'val_loss'`)
        mode (str, optional): :obj:`'min'` or :obj:`'max'`. (default:
            :obj:`'min'`)
        tie_break (str, optional): Validation metric, lower is better (e.g.
            :obj:`'val_loss'`), deciding between epochs whose
            :obj:`monitor` ties, as accuracies on small validation sets
            often do: without it the earliest such epoch stays
            :obj:`best.pt`. (default: :obj:`None`)
        resume (bool, optional): Continue from :obj:`out_dir/last.pt` when it
            exists. (default: :obj:`False`)
        overwrite (bool, optional): Delete the run :obj:`out_dir` holds
            when :meth:`fit` starts a new one, instead of moving it aside.
            (default: :obj:`False`)
        progress (bool, optional): Show a tqdm bar per epoch. (default:
            :obj:`True`)
        tensorboard (bool, optional): Write TensorBoard events; when installed
            if :obj:`None`. (default: :obj:`None`)
        ddp_kwargs (dict, optional): Extra arguments of
            :class:`~torch.nn.parallel.DistributedDataParallel`, e.g.
            :obj:`{'find_unused_parameters': True}`. (default: :obj:`None`)
    """
    def __init__(
        self,
        model: Module,
        task: Task,
        *,
        out_dir: Union[str, os.PathLike],
        epochs: int,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        clip_grad: Optional[float] = 2.0,
        amp: Optional[str] = None,
        compile: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        seed: int = 0,
        deterministic: bool = False,
        monitor: str = 'val_loss',
        mode: str = 'min',
        tie_break: Optional[str] = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        tensorboard: Optional[bool] = None,
        ddp_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        check_trainer_arguments(model, task, epochs, lr, weight_decay,
                                warmup_steps, clip_grad, amp, monitor, mode,
                                resume, overwrite, tie_break)
        self.rank, self.world_size, self.local_rank = init_distributed()
        self.is_main = self.rank == 0
        if device is None:
            device = (torch.device('cuda', self.local_rank)
                      if torch.cuda.is_available() else torch.device('cpu'))
        self.device = torch.device(device)
        if self.device.type == 'cuda' and self.device.index is not None:
            torch.cuda.set_device(self.device)

        self.task = task
        self.out_dir = os.fspath(out_dir)
        self.epochs = epochs
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = warmup_steps
        self.min_lr = float(min_lr)
        self.clip_grad = clip_grad
        self.amp = amp
        self.seed = seed
        self.deterministic = deterministic
        self.monitor = monitor
        self.mode = mode
        self.tie_break = tie_break
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.tensorboard = tensorboard
        self.metrics_file = MetricsFile(self.out_dir)
        if deterministic:
            enable_determinism()
        seed_everything(seed + self.rank)
        self._lock: Optional[RunFolderLock] = None
        if self.is_main:
            self._lock = RunFolderLock(self.out_dir)
            weakref.finalize(self, self._lock.release)
            remove_stale_temporaries(self.out_dir)

        self.model = model.to(self.device)
        self.train_model, self.eval_model = self._wrap_model(compile,
                                                             ddp_kwargs)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=amp == 'fp16')
        self.scheduler: Optional[WarmupCosineLR] = None
        self.global_step = 0
        self.best_score: Optional[float] = None
        self.best_tie: Optional[float] = None  # tie_break of the best epoch
        self.best_epoch: Optional[int] = None
        self._stop_signal: Optional[int] = None

    def _wrap_model(self, compile: bool,
                    ddp_kwargs: Optional[Dict[str, Any]]) -> Tuple[Module,
                                                                   Module]:
        # The models that train and evaluate: under DDP and/or compiled.
        train_model: Module = self.model
        if self.world_size > 1:
            device_ids = ([self.device.index]
                          if self.device.type == 'cuda' else None)
            train_model = DistributedDataParallel(
                self.model, device_ids=device_ids, **(ddp_kwargs or {}))
        eval_model: Module = self.model
        if compile:
            train_model = torch.compile(train_model)
            eval_model = (train_model if self.world_size == 1 else
                          torch.compile(self.model))
        return train_model, eval_model

    def _make_optimizer(self) -> torch.optim.AdamW:
        # Weight decay on matrices only, not on biases and norm scales.
        decay = [p for p in self.model.parameters()
                 if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters()
                    if p.requires_grad and p.ndim < 2]
        if not decay and not no_decay:
            raise ValueError("Expected 'model' to have trainable parameters")
        # On CUDA the fused implementation: a few kernels per step and no
        # per-parameter host work (the foreach one reads every
        # parameter's step count on the host).
        fused = True if self.device.type == 'cuda' else None
        return torch.optim.AdamW(
            [{'params': decay, 'weight_decay': self.weight_decay},
             {'params': no_decay, 'weight_decay': 0.0}], lr=self.lr,
            fused=fused)

    # ------------------------------------------------------------------ paths
    @property
    def last_path(self) -> str:
        return osp.join(self.out_dir, 'last.pt')

    @property
    def best_path(self) -> str:
        return osp.join(self.out_dir, 'best.pt')

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type,
                              dtype=_AMP_DTYPES.get(self.amp, torch.float32),
                              enabled=self.amp is not None)

    def _bar(self, iterable: Optional[Any] = None, **kwargs: Any) -> tqdm:
        r"""A transient tqdm bar, shown on the main process only when
        :obj:`progress` is set."""
        return tqdm(iterable, leave=False, dynamic_ncols=True,
                    disable=not (self.progress and self.is_main), **kwargs)

    # ------------------------------------------------------------- checkpoint
    def _state(self, epoch: int, step_in_epoch: int,
               rank_state: Dict[str, Any], steps_per_epoch: int) -> Dict[str, Any]:
        ranks = gather_rank_states(rank_state, self.world_size)
        # Models with constructor arguments on record (samsa_geo.nn.models)
        # save them, so that Model.from_checkpoint rebuilds them.
        config = getattr(self.model, 'model_config', None)
        return {
            'model': self.model.state_dict(),
            'model_config': config() if callable(config) else None,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(),
            'ranks': ranks,
            'epoch': epoch,
            'step_in_epoch': step_in_epoch,
            'steps_per_epoch': steps_per_epoch,
            'global_step': self.global_step,
            'best_score': self.best_score,
            'best_tie': self.best_tie,
            'best_epoch': self.best_epoch,
            'monitor': self.monitor,
            'mode': self.mode,
            'world_size': self.world_size,
        }

    def _save(self, state: Dict[str, Any], *paths: str) -> None:
        if self.is_main:
            for path in paths:
                save_checkpoint(state, path)
        barrier()

    def load_weights(self, checkpoint: str = 'best') -> None:
        r"""Loads model weights from :obj:`'best'`, :obj:`'last'` (files in
        :obj:`out_dir`) or a checkpoint path."""
        state = load_checkpoint(self._checkpoint_path(checkpoint),
                                map_location=self.device)
        self.model.load_state_dict(state['model'])

    def _checkpoint_path(self, checkpoint: str) -> str:
        # 'best', 'last' (files in out_dir) or a path.
        return {'best': self.best_path, 'last': self.last_path}.get(
            checkpoint, checkpoint)

    def close(self) -> None:
        r"""Releases the lock on :obj:`out_dir` (also done when the trainer
        is garbage-collected or the process ends)."""
        if self._lock is not None:
            self._lock.release()

    # ---------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.is_main:
                print(f'\nReceived {signal.Signals(signum).name}: finishing the '
                      f'current step and saving {self.last_path}',
                      file=sys.stderr, flush=True)

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    # -------------------------------------------------------------------- fit
    def fit(self, train_loader: Any,
            val_loader: Optional[Any] = None) -> Dict[str, Any]:
        r"""Trains for :obj:`epochs` epochs, validating after each one.

        Args:
            train_loader (Iterable): Training batches; must have a length.
                Its sampler's :meth:`set_epoch` is called every epoch and its
                :obj:`generator` is re-seeded from :obj:`(seed, rank, epoch)`.
            val_loader (Iterable, optional): Validation batches. Without it,
                :obj:`best.pt` is the last epoch. (default: :obj:`None`)

        Returns:
            dict: :obj:`best_epoch` (1-based), :obj:`best_score` and the
            :obj:`val_*` metrics of the best epoch.
        """
        steps_per_epoch, total_steps = self._schedule(train_loader)
        start_epoch, skip, rank_state, resumed_epochs, best_metrics = \
            self._start_run(steps_per_epoch, total_steps)
        log = RunLog(self.out_dir, self.tensorboard,
                     resumed_epochs) if self.is_main else None

        self._stop_signal = None
        previous = self._install_signal_handlers()
        start_time = time.time()
        try:
            for epoch in range(start_epoch, self.epochs):
                t0 = time.time()
                train_loss = self._train_epoch(train_loader, epoch, skip,
                                               rank_state, steps_per_epoch)
                skip, rank_state = 0, None
                if train_loss is None:
                    self._exit_on_signal()

                val_metrics = (self.evaluate(val_loader, split='val')
                               if val_loader is not None else {})
                improved = self._update_best(val_metrics, epoch)
                if improved:
                    best_metrics = val_metrics
                # lr of the epoch's last step (first parameter group).
                last_lr = self.scheduler.lr_at(self.global_step - 1,
                                               self.scheduler.base_lrs[0])
                row = {'epoch': epoch + 1,
                       'lr': last_lr,
                       'train_loss': train_loss,
                       'time': time.time() - t0, **val_metrics}
                self._end_epoch(epoch, row, log, improved, best_metrics,
                                val_metrics, steps_per_epoch,
                                time.time() - start_time)
                if all_reduce_max([float(self._stop_signal is not None)])[0]:
                    self._exit_on_signal()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if log is not None:
                log.close()
        return {'best_epoch': self.best_epoch, 'best_score': self.best_score,
                **best_metrics}

    def _schedule(self, train_loader: Any) -> Tuple[int, int]:
        r"""Checks the train loader and builds the learning-rate schedule;
        returns :obj:`(steps_per_epoch, total_steps)`."""
        try:
            steps_per_epoch = len(train_loader)
        except TypeError:
            raise TypeError("Expected 'train_loader' to have a length "
                            "(needed by the learning-rate schedule)") from None
        if steps_per_epoch < 1:
            raise ValueError("Expected 'train_loader' to yield at least one "
                             "batch (got an empty loader)")
        if self.world_size > 1:
            self._check_distributed_loader(train_loader, 'train_loader')
        total_steps = self.epochs * steps_per_epoch
        if self.warmup_steps > total_steps:
            raise ValueError(f"Expected 'warmup_steps' <= total steps "
                             f"{total_steps} (got {self.warmup_steps})")
        self.scheduler = WarmupCosineLR(self.optimizer, self.warmup_steps,
                                        total_steps, self.min_lr)
        return steps_per_epoch, total_steps

    def _start_run(
        self, steps_per_epoch: int, total_steps: int,
    ) -> Tuple[int, int, Optional[Dict[str, Any]], Optional[int],
               Dict[str, float]]:
        r"""Prepares the run folder and, with :obj:`resume`, restores
        :obj:`last.pt`; returns :obj:`(start_epoch, skip, rank_state,
        resumed_epochs, best_metrics)`, :obj:`resumed_epochs` being
        :obj:`None` for a new run."""
        if self.is_main:
            prepare_run_folder(self.out_dir, self.resume, self.overwrite)
        barrier()
        self.global_step, self.best_score, self.best_epoch = 0, None, None
        self.best_tie = None
        if self.resume and osp.isfile(self.last_path):
            state = load_checkpoint(self.last_path, map_location='cpu',
                                    required=RESUME_KEYS)
            start_epoch, skip, rank_state = self._restore(
                state, steps_per_epoch, total_steps)
            # The summary keeps the selected epoch's val_* metrics flat.
            best_metrics = {k: v for k, v in self.metrics_file.read().items()
                            if k.startswith('val_')}
            if self.is_main:
                print(f'Resuming from {self.last_path}: epoch '
                      f'{start_epoch + 1}, step {skip}/{steps_per_epoch}',
                      flush=True)
            return start_epoch, skip, rank_state, start_epoch, best_metrics
        if self.resume and self.is_main:
            print(f'No checkpoint at {self.last_path}: starting from scratch',
                  flush=True)
        return 0, 0, None, None, {}

    def _end_epoch(self, epoch: int, row: Dict[str, Any],
                   log: Optional[RunLog], improved: bool,
                   best_metrics: Dict[str, float],
                   last_metrics: Dict[str, float], steps_per_epoch: int,
                   seconds: float) -> None:
        r"""Logs the epoch's row, saves :obj:`last.pt` (and :obj:`best.pt`
        when it improved) and the summary."""
        if log is not None:
            log.append(row)
        state = self._state(epoch + 1, 0, capture_rank_state(),
                            steps_per_epoch)
        self._save(state, *([self.last_path, self.best_path]
                            if improved else [self.last_path]))
        if self.is_main:
            self.metrics_file.record_epoch(
                best_metrics, improved,  # flat val_* of the selected epoch
                monitor=self.monitor, mode=self.mode,
                best_epoch=self.best_epoch, best_score=self.best_score,
                last_epoch=epoch + 1, last=last_metrics, epochs=self.epochs,
                global_step=self.global_step, world_size=self.world_size,
                train_time_s=seconds)
            print(self._summary_line(row, improved), flush=True)

    def _check_distributed_loader(self, loader: Any, name: str) -> None:
        sampler = getattr(loader, 'sampler', None)
        if not isinstance(sampler, (DistributedSampler, DistributedEvalSampler)):
            warnings.warn(f"'{name}' has no distributed sampler: every rank "
                          f"iterates over the whole dataset (build it with "
                          f"samsa_geo.train.make_loader)", stacklevel=4)

    def _restore(self, state: Dict[str, Any], steps_per_epoch: int,
                 total_steps: int) -> Tuple[int, int, Optional[Dict[str, Any]]]:
        r"""Loads :obj:`state`; returns :obj:`(epoch, skip, rank_state)`,
        where :obj:`rank_state` is this rank's saved state, or :obj:`None`
        when the number of ranks changed (then :obj:`skip` is :obj:`0`)."""
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scheduler.total_steps != total_steps:
            warnings.warn(f"Resuming with {total_steps} total steps instead "
                          f"of {self.scheduler.total_steps}: the cosine "
                          f"schedule is stretched from here on", stacklevel=4)
            self.scheduler.total_steps = total_steps
            for group, lr in zip(self.optimizer.param_groups,
                                 self.scheduler.get_lr()):
                group['lr'] = lr
        self.scaler.load_state_dict(state['scaler'])
        self.global_step = int(state['global_step'])
        self.best_score = state['best_score']
        self.best_tie = state.get('best_tie')
        self.best_epoch = state['best_epoch']
        epoch, skip = resume_position(state, steps_per_epoch, self.last_path)
        skip, saved = restore_rank(state, self.rank, self.world_size,
                                   self.seed, epoch, skip, self.last_path)
        return epoch, skip, saved

    def _train_epoch(self, loader: Any, epoch: int, skip: int,
                     rank_state: Optional[Dict[str, Any]],
                     steps_per_epoch: int) -> Optional[float]:
        r"""Runs one epoch; returns the mean step loss over all ranks, or
        :obj:`None` if a signal stopped it (after saving :obj:`last.pt`)."""
        resuming = skip > 0  # _restore only returns skip > 0 with rank_state
        epoch_rng = rank_state['epoch_rng'] if resuming else get_rng_state()
        if resuming:
            set_rng_state(epoch_rng)  # Replay the loader's draws at epoch start.
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        generator = getattr(loader, 'generator', None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(
                (self.seed * 1_000_003 + self.rank * 10_007 + epoch) % 2**63)
        loss_sum = rank_state['loss_sum'] if resuming else 0.0
        loss_steps = rank_state['loss_steps'] if resuming else 0

        self.model.train()
        iterator = iter(loader)
        for _ in range(skip):
            next(iterator)
        if resuming:
            set_rng_state(rank_state['rng'])
        bar = self._bar(total=steps_per_epoch, initial=skip,
                        desc=f'Epoch {epoch + 1}/{self.epochs}')
        step = skip
        try:
            for batch in iterator:
                loss = self._train_step(batch)
                step += 1
                loss_sum += loss
                loss_steps += 1
                bar.update(1)
                if not bar.disable:
                    lr = self.optimizer.param_groups[0]['lr']
                    bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}',
                                    refresh=False)
                stop, nonfinite = all_reduce_max(
                    [float(self._stop_signal is not None),
                     float(not math.isfinite(loss))])
                if nonfinite:
                    raise FloatingPointError(
                        f'Non-finite training loss at epoch {epoch + 1}, step '
                        f'{step} (global step {self.global_step})')
                if stop:
                    state = self._state(epoch, step, capture_rank_state(
                        epoch_rng, loss_sum, loss_steps), steps_per_epoch)
                    self._save(state, self.last_path)
                    return None
        finally:
            bar.close()
        if step == 0:
            raise ValueError(f"Expected 'train_loader' to yield batches in "
                             f"epoch {epoch + 1} (got none; a one-shot "
                             f"iterator cannot be re-iterated)")
        if step != steps_per_epoch:
            warnings.warn(f"'train_loader' yielded {step} batches in epoch "
                          f"{epoch + 1} but its length is {steps_per_epoch}; "
                          f"the learning-rate schedule assumes the length",
                          stacklevel=3)
        total, count = all_reduce_sum([loss_sum, float(loss_steps)])
        return total / max(count, 1.0)

    def _train_step(self, batch: Any) -> float:
        batch = move_to_device(batch, self.device)
        with self._autocast():
            loss = self.task.training_step(self.train_model, batch)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"Expected 'training_step' to return a scalar "
                             f"loss tensor (got {shape})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                           self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        # .float(): float64 losses are reported rounded to float32 (bf16 and
        # fp16 values are exact in float32, so .item() would give the same).
        return loss.detach().float().item()

    def _update_best(self, metrics: Dict[str, float], epoch: int) -> bool:
        if not metrics:
            self.best_epoch = epoch + 1
            return True
        for name in (self.monitor, self.tie_break):
            if name is not None and name not in metrics:
                raise KeyError(f"Expected the metric '{name}' among the "
                               f"validation metrics {sorted(metrics)}")
        score = float(metrics[self.monitor])
        if math.isnan(score):
            return False
        tie = None if self.tie_break is None else \
            float(metrics[self.tie_break])
        better = self.best_score is None or (
            score < self.best_score if self.mode == 'min'
            else score > self.best_score)
        if not better and score == self.best_score and tie is not None:
            # NaN never wins; a first tie score replaces a missing one.
            better = not math.isnan(tie) and (self.best_tie is None
                                              or tie < self.best_tie)
        if better:
            self.best_score, self.best_tie = score, tie
            self.best_epoch = epoch + 1
        return better

    def _exit_on_signal(self) -> None:
        signum = self._stop_signal or signal.SIGTERM
        if self.is_main:
            print(f'Saved {self.last_path}; exiting (resume with resume=True)',
                  file=sys.stderr, flush=True)
        raise SystemExit(128 + int(signum))

    # --------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self, loader: Any, split: str = 'val',
                 checkpoint: Optional[str] = None) -> Dict[str, float]:
        r"""Evaluates on a whole split: :meth:`Task.eval_step` on every batch,
        outputs concatenated (and gathered from every rank under DDP), then
        :meth:`Task.compute_metrics` once.

        Args:
            loader (Iterable): The split's batches. Under DDP, build it with
                :func:`make_loader` (:obj:`shuffle=False`) so each rank sees a
                disjoint shard; a loader without a distributed sampler is
                evaluated in full on every rank.
            split (str, optional): Prefix of the metric names.
                (default: :obj:`'val'`)
            checkpoint (str, optional): Load weights from :obj:`'best'`,
                :obj:`'last'` or a path first. (default: :obj:`None`)

        Returns:
            dict: :obj:`{f'{split}_{name}': value}`. For splits other than
            :obj:`'val'` they are also stored in :obj:`metrics.json`, with
            the checkpoint's name under :obj:`checkpoint[split]`.
        """
        if checkpoint is not None:
            self.load_weights(checkpoint)
        sampler = getattr(loader, 'sampler', None)
        if isinstance(sampler, DistributedSampler):
            raise ValueError(
                f"Expected the {split} loader not to use a DistributedSampler, "
                f"which pads shards with repeated examples; use "
                f"make_loader(..., shuffle=False) (DistributedEvalSampler)")
        sharded = isinstance(sampler, DistributedEvalSampler)
        self.model.eval()
        chunks: Dict[str, List[Tensor]] = {}
        for batch in self._bar(loader, desc=f'Eval {split}'):
            batch = move_to_device(batch, self.device)
            with self._autocast():
                out = self.task.eval_step(self.eval_model, batch)
            if not isinstance(out, dict) or not all(
                    isinstance(v, Tensor) for v in out.values()):
                raise TypeError("Expected 'eval_step' to return a dict of "
                                "tensors")
            for key, value in out.items():
                value = value.detach()
                if value.ndim == 0:
                    value = value.view(1)  # [1]
                chunks.setdefault(key, []).append(value.cpu())
        outputs = {k: torch.cat(v, dim=0) for k, v in chunks.items()}
        if sharded:  # Returns outputs unchanged without a process group.
            outputs = all_gather_outputs(outputs)
        #: The last evaluated split's gathered outputs (confusion matrices,
        #: saved predictions).
        self.last_outputs = outputs
        metrics = self.task.compute_metrics(outputs)
        result = {f'{split}_{k}': _reported(v) for k, v in metrics.items()}
        if split != 'val' and self.is_main:
            self.metrics_file.record_evaluation(
                result, split, None if checkpoint is None else
                self._checkpoint_path(checkpoint))
        return result

    def update_summary(self, **values: Any) -> None:
        r"""Adds entries (e.g. :obj:`num_params`) to :obj:`metrics.json`
        (main process only, written atomically)."""
        if self.is_main:
            self.metrics_file.update(values)

    # ---------------------------------------------------------------- summary
    @property
    def metrics_path(self) -> str:
        return self.metrics_file.path

    def _summary_line(self, row: Dict[str, Any], improved: bool) -> str:
        parts = [f"epoch {row['epoch']:>3d}/{self.epochs}",
                 f"lr {row['lr']:.2e}", f"train_loss {row['train_loss']:.4f}"]
        parts += [f'{k} {v:.4f}' for k, v in row.items()
                  if k.startswith('val_')]
        parts.append(f"{row['time']:.1f}s" + (' *' if improved else ''))
        return ' | '.join(parts)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(out_dir={self.out_dir!r}, '
                f'epochs={self.epochs}, lr={self.lr}, amp={self.amp}, '
                f'world_size={self.world_size}, device={self.device})')


def _reported(value: Any) -> float:
    # A float32 metric as the decimal it prints as (0.15, not the float64
    # 0.15000000596046448); other values unchanged.
    value = float(value)
    single = np.float32(value)
    if math.isfinite(value) and float(single) == value:
        return float(str(single))
    return value
