from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, LayerNorm, Linear, Module, Sequential
from torch_geometric.nn.inits import reset

from samsa_geo.nn.attention._dispatch import (
    SCORE_MAX_CHANNELS,
    is_exporting,
    is_tracing,
    needs_grad,
    scorer_mlp_in_kernel,
)
from samsa_geo.nn.attention._module_tree import (
    ModuleTree,
    trace_hooks_of,
)
from samsa_geo.nn.attention._ops import importance_score
from samsa_geo.nn.attention._score_grad import (
    ScoredRows,
    score_tail,
    scorer_gelu,
    scorer_kernels_serve,
)
from samsa_geo.ops._utils import at_least_float32
from samsa_geo.ops.validation import (
    check_bool,
    check_matrix,
    check_positive_int,
)


class ImportanceScorer(Module):
    r"""The importance scorer of SAMSA (`"SAMSA: Efficient Transformer for
    Many Data Modalities" <https://arxiv.org/abs/2408.05391>`_): one logit per
    token and head, so that every head ranks the tokens differently

    .. math::
        \mathbf{s}_i = \mathbf{W}_s \left(\mathbf{x}_i +
        \mathrm{LN}\big(\mathrm{MLP}(\mathbf{x}_i)\big)\right) \in
        \mathbb{R}^{H},

    where :math:`\mathbf{x}_i` is the (un-normalised) token and :math:`H` the
    number of heads. With ``input_norm=True`` the scorer reads the
    normalised token
    :math:`\hat{\mathbf{x}}_i = \mathrm{LN}_{in}(\mathbf{x}_i)`
    in place of :math:`\mathbf{x}_i` (in the residual and the MLP alike):
    the scores are then invariant to a per-token affine map
    :math:`\mathbf{x}_i \mapsto a_i \mathbf{x}_i + b_i \mathbf{1}`,
    :math:`a_i > 0`, and their scale no longer follows the tokens' scale.

    The residual, the LayerNorm and :math:`\mathbf{W}_s` run in float32
    (under bf16/fp16 autocast too; float64 in a float64 scorer): the
    scores rank the tokens. On CUDA
    they are one Triton kernel that reads the tokens once, and in eager
    training their backward is another (see
    :func:`~samsa_geo.nn.attention.config.set_fused_scorer`). Where a
    hook is set on one of its layers (PyTorch's hook-based
    :func:`~torch.nn.utils.spectral_norm` or pruning, a recording hook),
    the layers are called as modules instead, so that the hook runs and
    the weight it sets is the one read.

    Args:
        channels (int): Token width :math:`C`.
        heads (int, optional): Number of heads :math:`H`. (default: :obj:`1`)
        input_norm (bool, optional): Apply a LayerNorm
            :math:`\mathrm{LN}_{in}` to the tokens before scoring them.
            (default: :obj:`False`)

    Shapes:
        - **input:** :math:`(N, C)`
        - **output:** :math:`(N, H)`, float32
    """
    def __init__(self, channels: int, heads: int = 1,
                 input_norm: bool = False) -> None:
        super().__init__()
        check_positive_int('channels', channels)
        check_positive_int('heads', heads)
        check_bool('input_norm', input_norm)
        self.channels = channels
        self.heads = heads
        self.norm_in = LayerNorm(channels) if input_norm else None
        self.score_nn = Sequential(Linear(channels, channels), GELU(),
                                   Linear(channels, channels))
        self.norm = LayerNorm(channels)
        self.lin = Linear(channels, heads)
        self._module_tree = ModuleTree()
        trace_hooks_of(self)
        self.reset_parameters()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        trace_hooks_of(self)

    def reset_parameters(self) -> None:
        if self.norm_in is not None:
            self.norm_in.reset_parameters()
        reset(self.score_nn)
        self.norm.reset_parameters()
        self.lin.reset_parameters()

    def forward(self, x: Tensor, hidden: Optional[Tensor] = None,
                lin2_weights: Optional[Tuple[Tensor, Tensor]] = None,
                lin1_inputs: Optional[Tuple[Tensor, Tensor,
                                            Optional[Tensor]]] = None,
                rows: Optional[ScoredRows] = None,
                hooked: Optional[bool] = None) -> Tensor:
        r"""Scores of the tokens ``x`` :math:`(N, C)`; ``hidden`` is the
        MLP's first linear layer applied to ``x``, if the caller computed
        it already (fused with other projections of ``x``; never with
        ``input_norm=True``), and ``lin2_weights`` the weight and bias of
        its second linear layer, if the caller cast them already (to
        autocast's dtype). ``lin1_inputs`` are the input, weight and bias
        (in the dtype of ``hidden``) that computed ``hidden``, if the
        caller keeps them anyway: the training node then recomputes
        ``hidden`` from them in its backward, without casting again.
        ``rows`` (:class:`~._score_grad.ScoredRows`), filled by the caller
        before the backward pass, names the only (token, head) pairs whose
        scores receive a gradient: the training node's backward then runs
        on their rows alone. ``hooked`` says whether a hook is set on a
        submodule, if the caller knows (:obj:`None`: checked here); with
        one, the layers are called as modules: ``hidden`` and
        ``lin2_weights`` must be left out, ``lin1_inputs`` and ``rows``
        are not read."""
        check_matrix('x', x, self.channels)
        lin1, act, lin2 = self.score_nn
        if self.norm_in is not None:
            assert hidden is None and lin1_inputs is None, \
                'hidden of the raw tokens'
            x = self.norm_in(x)  # float32 under autocast
        if hooked is None:
            hooked = self._module_tree.hooked_in(self)
        if hooked:
            assert hidden is None and lin2_weights is None, \
                'the layers are called as modules'
            return self._modules_forward(x)
        if hidden is None:
            hidden = F.linear(x, lin1.weight, lin1.bias)
        if lin2_weights is None:
            lin2_weights = (lin2.weight, lin2.bias)
        norm, lin = self.norm, self.lin
        if not is_tracing() and needs_grad(hidden, x, lin2_weights[0],
                                           norm.weight, lin.weight):
            # Training in eager mode: one autograd node that recomputes
            # its activations in the backward (less memory, less host
            # work; compiled graphs keep the formula below).
            x_in, w1, b1 = lin1_inputs or (x, lin1.weight, lin1.bias)
            return score_tail(hidden, x, w1, b1, *lin2_weights, norm.weight,
                              norm.bias, norm.eps, lin.weight, lin.bias,
                              act.approximate, x_in, rows)
        kernel = self._use_kernel(x, hidden, lin2_weights[0])
        if kernel:
            # Eager calls launch the kernel directly: the custom operator's
            # dispatch costs more host time than the kernel takes on the
            # GPU; compiled graphs keep the operator (no graph break).
            op = importance_score if is_tracing() else _eager_kernel()
            tail = (norm.weight, norm.bias, norm.eps, lin.weight, lin.bias)
            if self._mlp_in_kernel(hidden, lin2_weights[0]):
                # The activation and the second layer in the kernel too.
                return op(hidden, x, *tail, *lin2_weights, act.approximate)
        # The modules hold the parameters; calling them functionally saves
        # their dispatch on the host.
        y = F.linear(scorer_gelu(hidden, act.approximate), *lin2_weights)
        if kernel:
            return op(y, x, *tail)
        # Scores rank the tokens: the residual, the LayerNorm and the
        # projection run in float32 even under bf16/fp16 autocast (in
        # float64 in a float64 scorer).
        dtype = at_least_float32(lin.weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            h = x.to(dtype) + F.layer_norm(
                y.to(dtype), norm.normalized_shape, norm.weight.to(dtype),
                norm.bias.to(dtype), norm.eps)
            return F.linear(h, lin.weight.to(dtype), lin.bias.to(dtype))

    def _modules_forward(self, x: Tensor) -> Tensor:
        # The formula with every layer called as a module (a hook on one
        # runs). The residual, the LayerNorm and W_s run in the layers'
        # dtype, at least float32, as the functional path's.
        y = self.score_nn(x)  # [N, C]
        dtype = self.lin.weight.dtype
        if dtype == at_least_float32(dtype):  # float32 or float64
            with torch.autocast(x.device.type, enabled=False):
                h = x.to(dtype) + self.norm(y.to(dtype))
                return self.lin(h)  # [N, H]
        # Layers of a lower precision (a module cast with .half()): in
        # their dtype, the scores returned in float32.
        h = x.to(dtype) + self.norm(y.to(dtype))
        return self.lin(h).float()

    def _use_kernel(self, x: Tensor, hidden: Tensor, lin2_weight: Tensor,
                    ) -> bool:
        # The fused Triton kernel serves inference on CUDA (forward only),
        # compiled graphs included (as a custom operator); exported graphs
        # keep the PyTorch formula, and so does a float64 scorer (the
        # kernel computes in float32).
        return (scorer_kernels_serve(x.device, self.lin.weight)
                and self.channels <= SCORE_MAX_CHANNELS
                and not is_exporting()
                and not needs_grad(x, hidden, lin2_weight, self.norm.weight,
                                   self.norm.bias, self.lin.weight,
                                   self.lin.bias))

    def _mlp_in_kernel(self, hidden: Tensor, lin2_weight: Tensor) -> bool:
        # The kernel runs the second layer in hidden's dtype: that of the
        # weight, or autocast's (which F.linear would cast to).
        dtype, device = hidden.dtype, hidden.device.type
        return (scorer_mlp_in_kernel(hidden)
                and (lin2_weight.dtype == dtype
                     or (torch.is_autocast_enabled(device)
                         and torch.get_autocast_dtype(device) == dtype)))

    def __repr__(self) -> str:
        extra = ', input_norm=True' if self.norm_in is not None else ''
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads}{extra})')


def _eager_kernel():
    # Imported on first use: Triton is needed only where the kernel runs.
    from samsa_geo.nn.attention._score_triton import importance_score_triton
    return importance_score_triton
