"""What a checkpoint keeps for an exact resume beyond the weights: every
rank's random streams and running loss, and the position in the epoch."""
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from samsa_geo.train.seed import get_rng_state, seed_everything, set_rng_state

#: Entries of :obj:`last.pt` that a resume needs.
RESUME_KEYS = ('model', 'optimizer', 'scheduler', 'scaler', 'ranks', 'epoch',
               'step_in_epoch', 'global_step', 'best_score', 'best_epoch')


def capture_rank_state(epoch_rng: Optional[Dict[str, Any]] = None,
                       loss_sum: float = 0.0, loss_steps: int = 0,
                       sampler_rng: Optional[torch.Tensor] = None
                       ) -> Dict[str, Any]:
    r"""This rank's state: its random streams now and at the start of the
    epoch (to replay the loader's draws), the epoch's running loss, and the
    state of the train sampler's own :class:`torch.Generator` (if it has
    one) to set before the loader is next iterated."""
    return {'rng': get_rng_state(), 'epoch_rng': epoch_rng,
            'loss_sum': loss_sum, 'loss_steps': loss_steps,
            'sampler_rng': sampler_rng}


def gather_rank_states(state: Dict[str, Any],
                       world_size: int) -> List[Any]:
    r"""The :func:`capture_rank_state` of every rank (all ranks call it)."""
    ranks: List[Any] = [state]
    if world_size > 1:
        ranks = [None] * world_size
        torch.distributed.all_gather_object(ranks, state)
    return ranks


def resume_position(state: Dict[str, Any], steps_per_epoch: int,
                    path: str) -> Tuple[int, int]:
    r"""Returns :obj:`(epoch, step_in_epoch)` of a checkpoint; a mid-epoch
    checkpoint must come from a loader of the same length."""
    epoch, skip = int(state['epoch']), int(state['step_in_epoch'])
    if skip and state.get('steps_per_epoch') != steps_per_epoch:
        raise ValueError(
            f"Cannot resume mid-epoch from '{path}': it was "
            f"written with {state.get('steps_per_epoch')} steps per epoch, "
            f"the train loader now has {steps_per_epoch}")
    return epoch, skip


def restore_rank(state: Dict[str, Any], rank: int, world_size: int,
                 seed: int, epoch: int, skip: int, path: str
                 ) -> Tuple[int, Optional[Dict[str, Any]]]:
    r"""Restores this rank's random streams; returns :obj:`(skip,
    rank_state)`, or :obj:`(0, None)` after re-seeding when the number of
    ranks changed (possible at an epoch boundary only)."""
    ranks = state['ranks']
    if len(ranks) == world_size:
        saved = ranks[rank]
        set_rng_state(saved['rng'])
        return skip, saved
    warnings.warn(f"'{path}' was written by {len(ranks)} ranks, "
                  f"now running {world_size}: random streams are "
                  f"re-seeded, so the run is not bit-exact", stacklevel=5)
    seed_everything(seed + rank + 1000 * epoch)
    if skip:
        raise ValueError(f"Cannot resume mid-epoch from '{path}' "
                         f"with a different number of ranks; resume with "
                         f"{len(ranks)} processes")
    return 0, None
