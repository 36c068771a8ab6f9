import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, LayerNorm, Linear, Module, Sequential


class ImportanceScorer(Module):
    r"""The importance scorer of SAMSA (`"SAMSA: Efficient Transformer for
    Many Data Modalities" <https://arxiv.org/abs/2408.05391>`_): one logit per
    token and head, so that every head ranks the tokens differently

    .. math::
        \mathbf{s}_i = \mathbf{W}_s \left(\mathbf{x}_i +
        \mathrm{LN}\big(\mathrm{MLP}(\mathbf{x}_i)\big)\right) \in
        \mathbb{R}^{H},

    where :math:`\mathbf{x}_i` is the (un-normalised) token and :math:`H` the
    number of heads.

    Args:
        channels (int): Token width :math:`C`.
        heads (int, optional): Number of heads :math:`H`. (default: :obj:`1`)

    Shapes:
        - **input:** :math:`(N, C)`
        - **output:** :math:`(N, H)`, float32
    """
    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.heads = heads
        self.score_nn = Sequential(Linear(channels, channels), GELU(),
                                   Linear(channels, channels))
        self.norm = LayerNorm(channels)
        self.lin = Linear(channels, heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.score_nn:
            if hasattr(m, 'reset_parameters'):
                m.reset_parameters()
        self.norm.reset_parameters()
        self.lin.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.norm(self.score_nn(x))
        # Scores rank the tokens: the last projection runs in float32 even
        # under bf16/fp16 autocast.
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(h.float(), self.lin.weight.float(),
                            self.lin.bias.float())

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads})')
