from typing import Any, Dict, Protocol, runtime_checkable

from torch import Tensor
from torch.nn import Module


@runtime_checkable
class Task(Protocol):
    r"""What an example supplies to :class:`~samsa_geo.train.Trainer`: the loss
    and the metrics of one benchmark. The trainer knows nothing else about the
    model or the data.

    :meth:`training_step` returns the scalar loss of one batch (mean over its
    examples). :meth:`eval_step` returns per-example (or per-node/point)
    tensors whose first dimension is the number of items in the batch, e.g.
    :obj:`{'pred': [B, C], 'target': [B], 'loss': [B]}`; the trainer moves
    them to the CPU, concatenates them over the whole split (gathering them
    from every rank under DDP, in dataset order) and hands them once to
    :meth:`compute_metrics`, so metrics are never averages of averages.

    .. code-block:: python

        class Classification:
            def training_step(self, model, batch):
                return F.cross_entropy(model(batch), batch.y)

            def eval_step(self, model, batch):
                logits = model(batch)
                return {'pred': logits.argmax(-1), 'target': batch.y,
                        'loss': F.cross_entropy(logits, batch.y,
                                                reduction='none')}

            def compute_metrics(self, outputs):
                acc = (outputs['pred'] == outputs['target']).float().mean()
                return {'acc': acc.item(), 'loss': outputs['loss'].mean().item()}
    """
    def training_step(self, model: Module, batch: Any) -> Tensor:
        ...

    def eval_step(self, model: Module, batch: Any) -> Dict[str, Tensor]:
        ...

    def compute_metrics(self, outputs: Dict[str, Tensor]) -> Dict[str, float]:
        ...
