from typing import Any, Optional

from torch import Tensor
from torch_geometric.nn.inits import reset

from samsa_geo.nn.models._samsa_point_model import PointModel, mlp_head
from samsa_geo.nn.models.samsa_point_backbone import max_mean_pool


class SamsaPointClassifier(PointModel):
    r"""Point cloud classifier built from :class:`~samsa_geo.nn.SamsaConv`
    (`"SAMSA: Efficient Transformer for Many Data Modalities"
    <https://arxiv.org/abs/2408.05391>`_):

    .. math::
        \mathbf{H}^{(0)} = \mathrm{Enc}(\mathbf{P}, \mathbf{X}), \qquad
        \mathbf{H}^{(l)} = \mathrm{SamsaConv}(\mathbf{H}^{(l-1)},
        \mathbf{P} - \mathbf{c}), \qquad
        \mathbf{y} = \mathrm{MLP}\Big(\max_i \mathbf{h}_i^{(L)} \,\Vert\,
        \tfrac{1}{n} \textstyle\sum_i \mathbf{h}_i^{(L)}\Big),

    where :math:`\mathbf{P}` are the positions, :math:`\mathbf{c}` their
    centroid per cloud, :math:`\mathbf{X}` optional point features and
    :math:`\mathrm{Enc}` a linear map of :math:`[\mathbf{P} \Vert
    \mathbf{X}]` or, with ``rotation_invariant=True``, a rotation-invariant
    encoder (:class:`~samsa_geo.nn.encoders.PPFPointEncoder` or
    :class:`~samsa_geo.nn.encoders.SFTPointEncoder`). Attention uses the
    relative bias of squared distances (and normal dot products in
    rotation-invariant mode) of the sampled pairs.

    **Invariance.** Outputs are invariant to point permutations (exactly in
    evaluation mode, barring ties of importance scores or at the
    :math:`k`-NN boundary). With ``rotation_invariant=True`` they are also
    invariant to rotations in :math:`SO(3)` of ``pos`` and of the normals
    ``x``, and to translations (tested to :math:`10^{-4}` in float32,
    evaluation mode, with both encoders); ``x`` must then be the normals
    (``in_channels=3``) or absent, and is used only through invariant
    features.

    Parameter counts (``num_classes=40``, ``in_channels=0``, defaults
    otherwise, measured in the tests): :obj:`SamsaPointClassifier.small`
    95,776 (rotation-invariant: 104,800 with the PPF encoder, 100,000 with
    the SFT encoder; ``local_conv=True``: 120,864); default size (256
    channels, 6 layers, 8 heads, :math:`k = 512`) 4,111,480
    (rotation-invariant with PPF: 4,245,880).

    Args:
        num_classes (int): Number of classes.
        head_dropout (float, optional): Dropout of the head.
            (default: :obj:`0.5`)
        **backbone_kwargs (optional): The keyword arguments of
            :class:`~samsa_geo.nn.models.SamsaPointBackbone` (``in_channels``,
            ``rotation_invariant``, ``encoder``, ``channels``,
            ``num_layers``, ``heads``, ``k``, ...), with its defaults.

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` sorted,
          ``x`` :math:`(N, F_{in})`
        - **output:** :math:`(B, \mathrm{num\_classes})`
    """
    def __init__(self, num_classes: int, *, head_dropout: float = 0.5,
                 **backbone_kwargs: Any) -> None:
        super().__init__()
        self.backbone = self.build_backbone(backbone_kwargs)
        channels = self.backbone.channels
        self.head = mlp_head(num_classes, 2 * channels, channels,
                             head_dropout)
        self.num_classes = num_classes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.backbone.reset_parameters()
        reset(self.head)

    def forward(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        x: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> Tensor:
        r"""Returns the logits :math:`(B, \mathrm{num\_classes})`.

        ``num_graphs`` and ``max_num_nodes`` (e.g.
        :func:`~samsa_geo.nn.batch_hints` of a PyG ``Batch``) spare the
        device read-backs that would compute them from ``batch``; with
        ``num_graphs`` the forward pass never waits for the GPU."""
        feats = self.backbone(pos, batch, x, num_graphs=num_graphs,
                              max_num_nodes=max_num_nodes)
        pooled = max_mean_pool(feats)  # [B, 2C]
        return self.head(pooled)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_classes}, '
                f'{self.backbone.repr_args()})')
