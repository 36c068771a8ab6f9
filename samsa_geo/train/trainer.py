import argparse
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
from samsa_geo.train.checkpoint import (CheckpointError, load_checkpoint,
                                        save_checkpoint)
from samsa_geo.train.config import (CONFIG_FILE, EVAL_CONFIG_FILE,
                                     check_resume_config, save_config)
from samsa_geo.train.distributed import (all_gather_outputs, all_reduce_max,
                                         all_reduce_sum, barrier,
                                         init_distributed)
from samsa_geo.train.distributed_eval_sampler import DistributedEvalSampler
from samsa_geo.train.loader import move_to_device
from samsa_geo.train.run_folder import (RunFiles, RunFolderLock,
                                        check_run_files, continues_run,
                                        in_folder, prepare_run_folder,
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
    :obj:`best.pt` (best :obj:`monitor` so far; written before
    :obj:`last.pt`, and a resume continues from it when a crash left it the
    newer of the two), :obj:`config.yaml` (with :obj:`config`;
    :obj:`eval_config.yaml` for an evaluation that keeps the run, see
    :meth:`start_evaluation`), :obj:`log.csv` (one row per
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
    deleting it with :obj:`overwrite=True`), with the files its caller wrote
    there (:obj:`run_files`), and refuses :obj:`resume` when :obj:`best.pt`
    exists without :obj:`last.pt` (see
    :func:`~samsa_geo.train.run_folder.prepare_run_folder`).

    A resume may change :obj:`epochs` (the cosine is stretched from there
    on, with a warning; :obj:`warmup_steps` may change with it). It refuses
    with a :class:`ValueError` naming the argument and both values a
    different :obj:`lr`, :obj:`weight_decay`, :obj:`min_lr`,
    :obj:`warmup_steps` (with the same total steps), :obj:`amp`,
    :obj:`monitor`, :obj:`mode` or :obj:`tie_break` than the checkpoint's:
    its optimiser, scheduler and grad-scaler state and its best score
    belong to those; and a model built with other constructor arguments
    than the checkpoint's :obj:`model_config`, naming them. With
    :obj:`config`, it first compares the options with those the run
    recorded in :obj:`config.yaml` (see
    :func:`~samsa_geo.train.check_resume_config`) and refuses with a
    :class:`ValueError` naming every option that differs, with both values,
    other than those of
    :data:`~samsa_geo.train.RESUME_MAY_CHANGE` (:obj:`epochs`,
    :obj:`device`, ...): another dataset root, number of points or split
    would continue the run on other data. A run folder without
    :obj:`config.yaml` resumes with a warning. A refused resume reads and
    writes nothing of the run.

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
        min_lr (float, optional): Learning rate at the end of the cosine, in
            :obj:`[0, lr]`. (default: :obj:`0.0`)
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
        run_files (list of str or re.Pattern, optional): The files and
            folders that the caller writes into :obj:`out_dir` besides the
            trainer's (e.g. :obj:`['confusion_matrix.png']`), or compiled
            regular expressions that match their whole names. They belong
            to the run: left alone they mark the folder as holding one, and
            they move aside or are deleted with it. (default: :obj:`()`)
        progress (bool, optional): Show a tqdm bar per epoch. (default:
            :obj:`True`)
        tensorboard (bool, optional): Write TensorBoard events; when installed
            if :obj:`None`. (default: :obj:`None`)
        ddp_kwargs (dict, optional): Extra arguments of
            :class:`~torch.nn.parallel.DistributedDataParallel`, e.g.
            :obj:`{'find_unused_parameters': True}`. (default: :obj:`None`)
        config (dict or argparse.Namespace, optional): The run's resolved
            options, written to :obj:`out_dir/config.yaml` (see
            :func:`~samsa_geo.train.save_config`) when :meth:`fit` has
            prepared the folder, so that an old run moved aside keeps its
            own; with :obj:`resume`, first compared with the recorded ones.
            (default: :obj:`None`)
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
        run_files: RunFiles = (),
        progress: bool = True,
        tensorboard: Optional[bool] = None,
        ddp_kwargs: Optional[Dict[str, Any]] = None,
        config: Optional[Union[Dict[str, Any], argparse.Namespace]] = None,
    ) -> None:
        check_trainer_arguments(model, task, out_dir, epochs, lr, weight_decay,
                                warmup_steps, min_lr, clip_grad, amp, monitor,
                                mode, resume, overwrite, tie_break, config)
        run_files = check_run_files(run_files)
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
        self.run_files = run_files
        self.progress = progress
        self.tensorboard = tensorboard
        # A copy: options changed after construction do not leak into it.
        self.config: Optional[Dict[str, Any]] = None if config is None else \
            dict(vars(config) if isinstance(config, argparse.Namespace)
                 else config)
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
        #: The val_* metrics of the best epoch, and of the last one.
        self.best_metrics: Dict[str, float] = {}
        self._last_metrics: Dict[str, float] = {}
        # Training time of the segments before a resume, and this one's start.
        self._time_before = 0.0
        self._fit_start = time.time()
        self._sampler_generator: Optional[torch.Generator] = None
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
    def _train_time(self) -> float:
        # Seconds of training over every segment of the run.
        return self._time_before + time.time() - self._fit_start

    def _state(self, epoch: int, step_in_epoch: int,
               rank_state: Dict[str, Any], steps_per_epoch: int,
               train_time: Optional[float] = None) -> Dict[str, Any]:
        ranks = gather_rank_states(rank_state, self.world_size)
        return {
            'model': self.model.state_dict(),
            'model_config': self._model_config(),
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
            'best_metrics': dict(self.best_metrics),
            'last_metrics': dict(self._last_metrics),
            'monitor': self.monitor,
            'mode': self.mode,
            'tie_break': self.tie_break,
            'amp': self.amp,
            'world_size': self.world_size,
            'train_time_s': (self._train_time() if train_time is None
                             else train_time),
        }

    def _model_config(self) -> Optional[Dict[str, Any]]:
        # Models with constructor arguments on record (samsa_geo.nn.models)
        # save them, so that Model.from_checkpoint rebuilds them.
        config = getattr(self.model, 'model_config', None)
        return config() if callable(config) else None

    def _save(self, state: Dict[str, Any], *paths: str) -> None:
        if self.is_main:
            for path in paths:
                save_checkpoint(state, path)
        barrier()

    def load_weights(self, checkpoint: str = 'best') -> None:
        r"""Loads model weights from :obj:`'best'`, :obj:`'last'` (files in
        :obj:`out_dir`) or a checkpoint path. A model built with other
        constructor arguments than the checkpoint's :obj:`model_config`
        (both on record), or whose weights do not fit, raises a
        :class:`ValueError` naming the checkpoint."""
        path = self._checkpoint_path(checkpoint)
        state = load_checkpoint(path, map_location=self.device)
        self._load_model_state(state, path,
                               'whose weights load_weights() loads',
                               "Build the model with the checkpoint's "
                               "arguments (e.g. Model.from_checkpoint)")

    def start_evaluation(self, checkpoint: str) -> Optional[str]:
        r"""Makes :obj:`out_dir` ready for a run that evaluates
        :obj:`checkpoint` (:obj:`'best'`, :obj:`'last'` or a path) and
        trains nothing (the examples' :obj:`--eval-checkpoint`), before
        :meth:`evaluate` writes its results there, so that the folder says
        which options they came from:

        - a checkpoint of :obj:`out_dir` itself (the run's
          :obj:`best.pt`, say), or with :obj:`resume` a run that
          :meth:`fit` would continue there (its :obj:`last.pt`): the run
          stays, and :obj:`config` is written to :obj:`eval_config.yaml`,
          beside the run's :obj:`config.yaml`;
        - otherwise :obj:`out_dir` is the evaluation's own run folder. An
          old run there moves aside (or, with :obj:`overwrite`, is deleted)
          as in :meth:`fit`, unless :obj:`resume` (an evaluation again in
          its folder), and :obj:`config` is written to
          :obj:`config.yaml`.

        Returns the path of the file that records :obj:`config`
        (:obj:`None` without :obj:`config`, and on other ranks).
        """
        path = self._checkpoint_path(checkpoint)
        keep = (in_folder(path, self.out_dir)
                or continues_run(self.out_dir, self.resume))
        written = None
        if self.is_main:
            if not keep and not self.resume:
                prepare_run_folder(self.out_dir, overwrite=self.overwrite,
                                   run_files=self.run_files)
            if self.config is not None:
                written = save_config(
                    self.config, self.out_dir,
                    EVAL_CONFIG_FILE if keep else CONFIG_FILE)
        barrier()
        return written

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
                Its sampler's :meth:`set_epoch` is called every epoch, its
                :obj:`generator` is re-seeded from :obj:`(seed, rank, epoch)`
                and the state of its sampler's own generator (if any) is
                saved with every checkpoint.
            val_loader (Iterable, optional): Validation batches; one with a
                length must not be empty. Without it, :obj:`best.pt` is the
                last epoch. (default: :obj:`None`)

        Returns:
            dict: :obj:`best_epoch` (1-based), :obj:`best_score` and the
            :obj:`val_*` metrics of the best epoch.
        """
        steps_per_epoch, total_steps = self._schedule(train_loader)
        if val_loader is not None and _num_items(val_loader) == 0:
            raise ValueError("Expected 'val_loader' to yield at least one "
                             "batch (got an empty loader)")
        self._sampler_generator = _sampler_generator(train_loader)
        start_epoch, skip, rank_state, resumed_epochs = \
            self._start_run(steps_per_epoch, total_steps)
        log = RunLog(self.out_dir, self.tensorboard,
                     resumed_epochs) if self.is_main else None

        self._stop_signal = None
        previous = self._install_signal_handlers()
        self._fit_start = time.time()
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
                    self.best_metrics = val_metrics
                self._last_metrics = val_metrics
                # lr of the epoch's last step (first parameter group).
                last_lr = self.scheduler.lr_at(self.global_step - 1,
                                               self.scheduler.base_lrs[0])
                row = {'epoch': epoch + 1,
                       'lr': last_lr,
                       'train_loss': train_loss,
                       'time': time.time() - t0, **val_metrics}
                self._end_epoch(epoch, row, log, improved, steps_per_epoch)
                if all_reduce_max([float(self._stop_signal is not None)])[0]:
                    self._exit_on_signal()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if log is not None:
                log.close()
        return {'best_epoch': self.best_epoch, 'best_score': self.best_score,
                **self.best_metrics}

    def _schedule(self, train_loader: Any) -> Tuple[int, int]:
        r"""Checks the train loader and builds the learning-rate schedule;
        returns :obj:`(steps_per_epoch, total_steps)`."""
        try:
            steps_per_epoch = len(train_loader)
        except TypeError:
            raise TypeError("Expected 'train_loader' to have a length "
                            "(needed by the learning-rate schedule)") from None
        if steps_per_epoch < 1:
            raise ValueError(f"Expected 'train_loader' to yield at least one "
                             f"batch (got an empty loader"
                             f"{_why_empty(train_loader)})")
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
    ) -> Tuple[int, int, Optional[Dict[str, Any]], Optional[int]]:
        r"""Prepares the run folder and, with :obj:`resume`, checks
        :obj:`config` against the run's :obj:`config.yaml` and restores
        :obj:`last.pt` (or :obj:`best.pt` where a crash left it the newer);
        then writes :obj:`config.yaml`. Returns :obj:`(start_epoch, skip,
        rank_state, resumed_epochs)`, :obj:`resumed_epochs` being
        :obj:`None` for a new run."""
        if self.is_main:
            prepare_run_folder(self.out_dir, self.resume, self.overwrite,
                               run_files=self.run_files)
        barrier()
        self.global_step, self.best_score, self.best_epoch = 0, None, None
        self.best_tie = None
        self.best_metrics, self._last_metrics = {}, {}
        self._time_before = 0.0
        result: Tuple[int, int, Optional[Dict[str, Any]], Optional[int]] = \
            (0, 0, None, None)
        if continues_run(self.out_dir, self.resume):
            if self.config is not None:  # before anything of the run is read
                check_resume_config(self.config, self.out_dir)
            path, state = self._resume_state()
            start_epoch, skip, rank_state = self._restore(
                state, steps_per_epoch, total_steps, path)
            if self.is_main:
                if path != self.last_path:  # last.pt catches up with best.pt
                    save_checkpoint(state, self.last_path)
                self._repair_summary(state)
                print(f'Resuming from {path}: epoch {start_epoch + 1}, step '
                      f'{skip}/{steps_per_epoch}', flush=True)
            result = (start_epoch, skip, rank_state, start_epoch)
        elif self.resume and self.is_main:
            print(f'No checkpoint at {self.last_path}: starting from scratch',
                  flush=True)
        if self.is_main and self.config is not None:
            save_config(self.config, self.out_dir)
        barrier()
        return result

    def _resume_state(self) -> Tuple[str, Dict[str, Any]]:
        r"""The checkpoint to resume from and its path: :obj:`last.pt`, or
        :obj:`best.pt` when it is further on. :obj:`best.pt` is written
        before :obj:`last.pt`, so a crash between the two leaves it holding
        the state that :obj:`last.pt` lacks."""
        state = load_checkpoint(self.last_path, map_location='cpu',
                                required=RESUME_KEYS)
        if not osp.isfile(self.best_path):
            return self.last_path, state
        try:
            best = load_checkpoint(self.best_path, map_location='cpu',
                                   required=RESUME_KEYS)
        except CheckpointError as e:
            warnings.warn(f"Resuming from '{self.last_path}'; "
                          f"'{self.best_path}' cannot be read ({e})",
                          stacklevel=4)
            return self.last_path, state
        if int(best['global_step']) > int(state['global_step']):
            return self.best_path, best
        return self.last_path, state

    def _repair_summary(self, state: Dict[str, Any]) -> None:
        r"""Rewrites the summary from a resumed checkpoint when a crash came
        between the checkpoint and :obj:`metrics.json` (checkpoints that
        keep the best epoch's metrics only)."""
        summary = self.metrics_file.read()
        epochs_done = int(state['epoch'])
        if ('best_metrics' in state and epochs_done > 0
                and summary.get('last_epoch') != epochs_done):
            self._record_summary(summary.get('best_epoch') != self.best_epoch,
                                 epochs_done, self._time_before)

    def _record_summary(self, improved: bool, last_epoch: int,
                        train_time: float) -> None:
        self.metrics_file.record_epoch(
            self.best_metrics, improved,  # flat val_* of the selected epoch
            monitor=self.monitor, mode=self.mode,
            best_epoch=self.best_epoch, best_score=self.best_score,
            last_epoch=last_epoch, last=self._last_metrics,
            epochs=self.epochs, global_step=self.global_step,
            world_size=self.world_size, train_time_s=train_time)

    def _end_epoch(self, epoch: int, row: Dict[str, Any],
                   log: Optional[RunLog], improved: bool,
                   steps_per_epoch: int) -> None:
        r"""Logs the epoch's row, saves :obj:`best.pt` (when it improved),
        then :obj:`last.pt`, then the summary."""
        if log is not None:
            log.append(row)
        train_time = self._train_time()
        generator = self._sampler_generator
        state = self._state(epoch + 1, 0, capture_rank_state(
            sampler_rng=None if generator is None else generator.get_state()),
            steps_per_epoch, train_time)
        # best.pt first: a crash before last.pt is written leaves best.pt the
        # newer of the two, which a resume then continues from.
        self._save(state, *([self.best_path, self.last_path]
                            if improved else [self.last_path]))
        if self.is_main:
            self._record_summary(improved, epoch + 1, train_time)
            print(self._summary_line(row, improved), flush=True)

    def _check_distributed_loader(self, loader: Any, name: str) -> None:
        sampler = getattr(loader, 'sampler', None)
        if not isinstance(sampler, (DistributedSampler, DistributedEvalSampler)):
            warnings.warn(f"'{name}' has no distributed sampler: every rank "
                          f"iterates over the whole dataset (build it with "
                          f"samsa_geo.train.make_loader)", stacklevel=4)

    def _restore(self, state: Dict[str, Any], steps_per_epoch: int,
                 total_steps: int,
                 path: str) -> Tuple[int, int, Optional[Dict[str, Any]]]:
        r"""Loads :obj:`state` (read from :obj:`path`); returns :obj:`(epoch,
        skip, rank_state)`, where :obj:`rank_state` is this rank's saved
        state, or :obj:`None` when the number of ranks changed (then
        :obj:`skip` is :obj:`0`)."""
        stretched = state['scheduler']['total_steps'] != total_steps
        self._check_resume_settings(state, path, stretched)
        self._load_model_state(state, path, 'that resume=True continues',
                               'Resume with the same model arguments, or '
                               'start a new run without resume')
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if stretched:
            change = f'{total_steps} total steps'
            was = f'{self.scheduler.total_steps}'
            if self.scheduler.warmup_steps != self.warmup_steps:
                change += f' and {self.warmup_steps} warm-up steps'
                was += f' and {self.scheduler.warmup_steps}'
            warnings.warn(f"Resuming with {change} instead of {was}: the "
                          f"cosine schedule is stretched from here on",
                          stacklevel=4)
            self.scheduler.total_steps = total_steps
            self.scheduler.warmup_steps = self.warmup_steps
            for group, lr in zip(self.optimizer.param_groups,
                                 self.scheduler.get_lr()):
                group['lr'] = lr
        self.scaler.load_state_dict(state['scaler'])
        self.global_step = int(state['global_step'])
        self.best_score = state['best_score']
        self.best_tie = state.get('best_tie')
        self.best_epoch = state['best_epoch']
        if 'best_metrics' in state:
            self.best_metrics = dict(state['best_metrics'])
            self._last_metrics = dict(state.get('last_metrics') or {})
        else:  # Written before checkpoints kept them: the summary's.
            self.best_metrics = {k: v for k, v in
                                 self.metrics_file.read().items()
                                 if k.startswith('val_')}
        self._time_before = float(state.get('train_time_s') or 0.0)
        epoch, skip = resume_position(state, steps_per_epoch, path)
        skip, saved = restore_rank(state, self.rank, self.world_size,
                                   self.seed, epoch, skip, path)
        return epoch, skip, saved

    def _check_resume_settings(self, state: Dict[str, Any], path: str,
                               stretched: bool) -> None:
        r"""Raises a :class:`ValueError` naming the first argument that
        differs from the checkpoint's where the resume would silently use
        the checkpoint's value, or compare scores selected another way.
        :obj:`warmup_steps` may change with the total steps (the examples
        derive it from :obj:`epochs`)."""
        optimizer = state['optimizer']['param_groups'][0]
        scheduler = state['scheduler']
        selection = ('its best score was selected with it, and would be '
                     'compared with scores selected otherwise')
        restored = 'its optimizer and scheduler state would override it'
        checks = [
            ('monitor', state.get('monitor'), self.monitor, selection),
            ('mode', state.get('mode'), self.mode, selection),
            ('tie_break', state.get('tie_break'), self.tie_break, selection),
            ('lr', scheduler['base_lrs'][0], self.lr, restored),
            ('weight_decay', optimizer['weight_decay'], self.weight_decay,
             restored),
            ('min_lr', scheduler['min_lr'], self.min_lr, restored),
            ('warmup_steps', scheduler['warmup_steps'], self.warmup_steps,
             restored + " (it may change only with 'epochs')"),
            ('amp', state.get('amp'), self.amp,
             'a run keeps its precision and grad-scaler state'),
        ]
        for name, saved, given, why in checks:
            if name in ('monitor', 'mode', 'tie_break', 'amp') \
                    and name not in state:
                continue  # Not recorded by older checkpoints.
            if name == 'warmup_steps' and stretched:
                continue
            if saved != given:
                raise ValueError(
                    f"Expected '{name}' to be {saved!r}, as in the checkpoint "
                    f"'{path}' that resume=True continues (got {given!r}): "
                    f"{why}. Resume with {name}={saved!r}, or start a new run "
                    f"without resume")
        # Older checkpoints: an fp16 run is one with grad-scaler state.
        if 'amp' not in state and \
                bool(state['scaler']) != (self.amp == 'fp16'):
            saved = "'fp16'" if state['scaler'] else "None or 'bf16'"
            raise ValueError(
                f"Expected 'amp' to be {saved}, as in the checkpoint '{path}' "
                f"that resume=True continues (got {self.amp!r}): a run keeps "
                f"its precision and grad-scaler state. Resume with that amp, "
                f"or start a new run without resume")

    def _load_model_state(self, state: Dict[str, Any], path: str, what: str,
                          fix: str) -> None:
        r"""Loads the checkpoint's weights into the model, or raises a
        :class:`ValueError` naming the constructor arguments in which the
        model differs from the checkpoint's (both on record): weights of
        the same shapes (another :obj:`k` or :obj:`dropout`) would
        otherwise load silently; or naming the checkpoint where the
        weights do not fit (models without constructor arguments)."""
        saved, given = state.get('model_config'), self._model_config()
        if saved is None or given is None or saved == given:
            try:
                self.model.load_state_dict(state['model'])
            except RuntimeError as e:
                raise ValueError(
                    f"Expected the model to be the one that wrote the "
                    f"checkpoint '{path}' {what}: its weights do not fit. "
                    f"{fix}. {e}") from e
            return
        if saved.get('class') != given.get('class'):
            diffs = [f"class {saved.get('class')!r} there (got "
                     f"{given.get('class')!r})"]
        else:
            old, new = saved.get('kwargs', {}), given.get('kwargs', {})
            diffs = [f'{name}={old.get(name)!r} there (got '
                     f'{new.get(name)!r})' for name in sorted({*old, *new})
                     if old.get(name) != new.get(name)]
        raise ValueError(
            f"Expected the model to be built as in the checkpoint '{path}' "
            f"{what}: {', '.join(diffs)}. {fix}")

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
        # A sampler's own generator (RandomSampler(..., generator=g)) goes on
        # from the state saved with the checkpoint, unless it is the loader's
        # (DataLoader(..., shuffle=True, generator=g)), just re-seeded.
        sampler_rng = None
        if self._sampler_generator is not None:
            if self._sampler_generator is not generator \
                    and rank_state is not None \
                    and rank_state.get('sampler_rng') is not None:
                self._sampler_generator.set_state(rank_state['sampler_rng'])
            sampler_rng = self._sampler_generator.get_state()
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
                        epoch_rng, loss_sum, loss_steps, sampler_rng),
                        steps_per_epoch)
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
        batches = 0
        for batch in self._bar(loader, desc=f'Eval {split}'):
            batches += 1
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
            batches = int(all_reduce_sum([float(batches)])[0])
        if batches == 0:
            raise ValueError(f"Expected the '{split}' loader to yield at "
                             f"least one batch (got none)")
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


def _num_items(loader: Any) -> Optional[int]:
    # The loader's length (its dataset's for a sharded evaluation loader,
    # where one rank's shard may be empty); None without a length.
    sampler = getattr(loader, 'sampler', None)
    try:
        if isinstance(sampler, DistributedEvalSampler):
            return len(sampler.dataset)
        return len(loader)
    except TypeError:
        return None


def _sampler_generator(loader: Any) -> Optional[torch.Generator]:
    # The sampler's own generator, e.g. RandomSampler(ds, generator=g).
    generator = getattr(getattr(loader, 'sampler', None), 'generator', None)
    return generator if isinstance(generator, torch.Generator) else None


def _reported(value: Any) -> float:
    # A float32 metric as the decimal it prints as (0.15, not the float64
    # 0.15000000596046448); other values unchanged.
    value = float(value)
    single = np.float32(value)
    if math.isfinite(value) and float(single) == value:
        return float(str(single))
    return value


def _why_empty(loader: Any) -> str:
    # Why a loader yields no batch, where it says: a (per-rank) dataset
    # smaller than one batch whose incomplete last batch is dropped.
    batch_size = getattr(loader, 'batch_size', None)
    if not getattr(loader, 'drop_last', False) or not batch_size:
        return ''
    sampler = getattr(loader, 'sampler', None)
    try:
        num = len(sampler if sampler is not None else loader.dataset)
    except TypeError:
        return ''
    return (f': {num} examples per epoch, fewer than its batch_size '
            f'{batch_size}, and drop_last=True; lower the batch size')
