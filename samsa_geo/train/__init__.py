r"""The one training engine used by every example: a :class:`Task` protocol
supplied by the example, and a :class:`Trainer` that knows nothing about
particular models or datasets."""
from samsa_geo.train.checkpoint import (CheckpointError, atomic_write,
                                        load_checkpoint, save_checkpoint)
from samsa_geo.train.config import (RESUME_MAY_CHANGE, add_run_args,
                                    check_resume_config, load_config,
                                    make_parser, parse_args_with_config,
                                    save_config)
from samsa_geo.train.distributed import (all_gather_cat, get_rank,
                                         get_world_size, init_distributed,
                                         is_distributed)
from samsa_geo.train.distributed_eval_sampler import DistributedEvalSampler
from samsa_geo.train.loader import (make_loader, move_to_device,
                                    steps_per_epoch)
from samsa_geo.train.run_folder import (RunFolderError, RunFolderLock,
                                        claim_run_folder, continues_run)
from samsa_geo.train.seed import (enable_determinism, seed_everything,
                                  seed_worker)
from samsa_geo.train.task import Task
from samsa_geo.train.trainer import Trainer
from samsa_geo.train.warmup_cosine_lr import WarmupCosineLR

__all__ = [
    'Task',
    'Trainer',
    'WarmupCosineLR',
    'DistributedEvalSampler',
    'CheckpointError',
    'RunFolderError',
    'RunFolderLock',
    'claim_run_folder',
    'continues_run',
    'atomic_write',
    'save_checkpoint',
    'load_checkpoint',
    'make_loader',
    'steps_per_epoch',
    'move_to_device',
    'init_distributed',
    'is_distributed',
    'get_rank',
    'get_world_size',
    'all_gather_cat',
    'seed_everything',
    'seed_worker',
    'enable_determinism',
    'make_parser',
    'add_run_args',
    'parse_args_with_config',
    'load_config',
    'save_config',
    'check_resume_config',
    'RESUME_MAY_CHANGE',
]
