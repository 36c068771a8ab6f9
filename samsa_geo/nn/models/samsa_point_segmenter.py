from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Embedding
from torch_geometric.nn.inits import reset

from samsa_geo.nn.attention import config
from samsa_geo.nn.models._samsa_point_model import PointModel, mlp_head
from samsa_geo.nn.models.samsa_point_backbone import max_mean_pool
from samsa_geo.ops.validation import (
    BATCH_DTYPES,
    check_integer_tensor,
    check_non_negative_int,
)


class SamsaPointSegmenter(PointModel):
    r"""Per-point segmentation (e.g. ShapeNetPart parts) built from
    :class:`~samsa_geo.nn.SamsaConv` (`"SAMSA: Efficient Transformer for
    Many Data Modalities" <https://arxiv.org/abs/2408.05391>`_), conditioned
    on the object category:

    .. math::
        \mathbf{H}^{(0)} = \mathrm{Enc}(\mathbf{P}, \mathbf{X}) +
        \mathbf{E}_{\mathrm{cat}}, \qquad
        \mathbf{H}^{(l)} = \mathrm{SamsaConv}(\mathbf{H}^{(l-1)},
        \mathbf{P} - \mathbf{c}), \qquad
        \mathbf{y}_i = \mathrm{MLP}\Big(\mathbf{h}_i^{(L)} \,\Vert\,
        \max_j \mathbf{h}_j^{(L)} \,\Vert\, \tfrac{1}{n} \textstyle\sum_j
        \mathbf{h}_j^{(L)}\Big),

    where :math:`\mathbf{E}_{\mathrm{cat}}` is a learned embedding of the
    cloud's category (added to every token) and the pools run over the
    point's cloud; the rest is as in
    :class:`~samsa_geo.nn.models.SamsaPointClassifier`. Restricting the
    logits to the parts of the category (ShapeNetPart protocol) is left to
    the loss/metric.

    **Invariance.** Outputs are equivariant to point permutations (exactly
    in evaluation mode, barring ties). With ``rotation_invariant=True`` they
    are invariant to rotations in :math:`SO(3)` of ``pos`` and of the
    normals ``x``, and to translations (tested to :math:`10^{-4}` in
    float32, evaluation mode, with both encoders).

    Parameter counts (``num_classes=50``, ``num_categories=16``,
    ``in_channels=0``, defaults otherwise, measured in the tests):
    :obj:`SamsaPointSegmenter.small` 101,674 (rotation-invariant: 110,698
    with the PPF encoder, 105,898 with the SFT encoder); default size (256
    channels, 8 layers, 16 heads, :math:`k = 128`) 5,523,634.

    Args:
        num_classes (int): Number of part classes (over all categories).
        num_categories (int, optional): Number of object categories;
            :obj:`0` disables the conditioning. (default: :obj:`16`)
        head_dropout (float, optional): Dropout of the head.
            (default: :obj:`0.5`)
        **backbone_kwargs (optional): The keyword arguments of
            :class:`~samsa_geo.nn.models.SamsaPointBackbone` (``in_channels``,
            ``rotation_invariant``, ``encoder``, ``channels``,
            ``num_layers``, ``heads``, ``k``, ...), with its defaults except
            ``num_layers=8``, ``heads=16`` and ``k=128``
            (:attr:`BACKBONE_DEFAULTS`).

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` sorted,
          ``x`` :math:`(N, F_{in})`, ``category`` :math:`(B)` (or
          :math:`(N)` per point)
        - **output:** :math:`(N, \mathrm{num\_classes})`
    """
    BACKBONE_DEFAULTS = dict(num_layers=8, heads=16, k=128)

    def __init__(self, num_classes: int, num_categories: int = 16, *,
                 head_dropout: float = 0.5, **backbone_kwargs: Any) -> None:
        super().__init__()
        self.backbone = self.build_backbone(backbone_kwargs)
        channels = self.backbone.channels
        head = mlp_head(num_classes, 3 * channels, channels, head_dropout)
        check_non_negative_int('num_categories', num_categories)
        self.num_classes = num_classes
        self.num_categories = num_categories
        self.category_emb = None
        if num_categories > 0:
            self.category_emb = Embedding(num_categories, channels)
        self.head = head  # registered after 'category_emb'
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.backbone.reset_parameters()
        if self.category_emb is not None:
            self.category_emb.reset_parameters()
        reset(self.head)

    def _category_tokens(self, category: Optional[Tensor], batch: Tensor,
                         num_clouds: int) -> Optional[Tensor]:
        if self.category_emb is None:
            if category is not None:
                raise ValueError("Expected 'category' to be None since "
                                 "'num_categories=0'")
            return None
        if category is None:
            raise ValueError(f"Expected 'category' of shape [B] since "
                             f"'num_categories={self.num_categories}'")
        check_integer_tensor('category', category, BATCH_DTYPES)
        category = category.long().view(-1)
        B, N = num_clouds, batch.numel()
        if category.numel() == B:
            category = category[batch]  # per cloud -> per point
        elif category.numel() != N:
            raise ValueError(f"Expected 'category' to have shape [{B}] (one "
                             f"per cloud) or [{N}] "
                             f"(got {list(category.shape)})")
        check = config.checks_values(category.device)
        if check and category.numel() > 0 and (int(category.min()) < 0 or int(
                category.max()) >= self.num_categories):
            lo, hi = int(category.min()), int(category.max())
            raise IndexError(f"Expected 'category' in [0, "
                             f"{self.num_categories}) (got values in "
                             f"[{lo}, {hi}])")
        return self.category_emb(category)  # [N, C]

    def forward(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        x: Optional[Tensor] = None,
        category: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> Tensor:
        r"""Returns per-point logits :math:`(N, \mathrm{num\_classes})`;
        ``num_graphs`` and ``max_num_nodes`` as in
        :meth:`SamsaPointClassifier.forward`."""
        layout = self.backbone.check_points(pos, batch, num_graphs,
                                            max_num_nodes)
        token_bias = self._category_tokens(category, layout.batch,
                                           layout.num_clouds)
        feats = self.backbone.features(pos, layout, x, token_bias)
        h, batch = feats.x, feats.batch
        glob = max_mean_pool(feats)  # [B, 2C]
        out = torch.cat([h, glob[batch]], dim=-1)  # [N, 3C]
        return self.head(out)  # [N, num_classes]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_classes}, '
                f'num_categories={self.num_categories}, '
                f'{self.backbone.repr_args()})')
