import inspect
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, Dropout, Linear, Module, ReLU, Sequential
from torch_geometric.nn.inits import reset
from torch_geometric.nn.norm import BatchNorm, LayerNorm
from torch_geometric.nn.resolver import (
    activation_resolver,
    normalization_resolver,
)
from torch_geometric.utils import is_sparse

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import is_tracing, needs_grad
from samsa_geo.nn.attention._sets import check_hints
from samsa_geo.nn.attention._stacked import (
    cached_stacked_cast,
    kept_while_unchanged,
    stacked_cast,
)
from samsa_geo.nn.attention.samsa_attention import SamsaAttention
from samsa_geo.nn.conv._graph_replay import GraphReplay
from samsa_geo.nn.conv._graph_training import (
    TrainingGraphReplay,
    autograd_allows_capture,
)
from samsa_geo.nn.attention._module_tree import ModuleTree, hooked
from samsa_geo.ops import layer_norm, residual_affine, residual_batch_norm
from samsa_geo.ops._utils import promoted_float
from samsa_geo.ops.linear import linear_unchecked
from samsa_geo.ops.masked_batch_norm import (
    counted_batch_norm,
    counted_rows_mask,
)
from samsa_geo.ops.validation import (
    check_batch_vector,
    check_bool,
    check_edge_index,
    check_kwargs,
    check_matrix,
)


#: The largest input (``x.numel()``) whose calls replay CUDA graphs. On the
#: H200 the layer of 256 channels at 1 x 65,536 tokens (2^24 values) took
#: 0.91 ms per inference call graphed against 1.33 ms eager, and 4.35 ms
#: per training step graphed against 6.78 ms eager (docs/benchmarks.md);
#: at 1 x 262,144 tokens the eager inference call is bound by the GPU, and
#: graphs, with their copies in and out, took 2.24-2.25 ms against
#: 2.17-2.23 ms eager in two runs.
CUDA_GRAPH_MAX_ELEMENTS = 1 << 24

#: The smallest residual sum (``x.numel()``) whose training batch norm runs
#: as :func:`~samsa_geo.ops.residual_batch_norm`. On the H200 the layer of
#: 256 channels trained (forward and backward) in 3.34 ms per call against
#: 3.44 with PyTorch's batch norm at 1 x 65,536 tokens and in 9.58 against
#: 9.92 at 1 x 262,144 (64f8576), but in 2.53 against 2.39 at 2 x 16,384
#: in the kernels' first version (a5cfb18; ``benchmarks/layer.py
#: --ops-backend``).
TRAINING_BATCH_NORM_MIN_ELEMENTS = 1 << 24


class SamsaConv(Module):
    r"""A GPS-style layer with SAMSA global attention: a drop-in for
    :class:`torch_geometric.nn.conv.GPSConv` whose attention costs
    :math:`O(N k)` instead of :math:`O(N^2)`
    (`"SAMSA: Efficient Transformer for Many Data Modalities"
    <https://arxiv.org/abs/2408.05391>`_).

    .. math::
        \mathbf{X}^{M} &= \mathrm{Norm}_1\big(\mathrm{MPNN}(\mathbf{X},
        \mathbf{E}) + \mathbf{X}\big), \qquad
        \mathbf{X}^{T} = \mathrm{Norm}_2\big(\mathrm{SAMSA}(\mathbf{X}) +
        \mathbf{X}\big),

        \mathbf{X}' &= \mathrm{Norm}_3\big(\mathbf{Y} +
        \mathrm{MLP}(\mathbf{Y})\big), \qquad
        \mathbf{Y} = \mathbf{X}^{M} + \mathbf{X}^{T},

    where :math:`\mathrm{MPNN}` is the optional local message passing layer
    ``conv`` (:math:`\mathbf{X}^{M} = 0` without it) and :math:`\mathrm{SAMSA}`
    is :class:`~samsa_geo.nn.SamsaAttention`. This is GPSConv's order
    (post-norm). With ``norm_first=True`` the layer is pre-norm, as the
    released SAMSA layer: the residual stream itself is never normalised,

    .. math::
        \mathbf{Y} = \mathbf{X} + \mathrm{MPNN}\big(\mathrm{Norm}_1(
        \mathbf{X}), \mathbf{E}\big) + \mathrm{SAMSA}\big(
        \mathrm{Norm}_2(\mathbf{X})\big), \qquad
        \mathbf{X}' = \mathbf{Y} + \mathrm{MLP}\big(\mathrm{Norm}_3(
        \mathbf{Y})\big),

    so a stack of them needs a normalisation before its head. The 6-layer
    point classifier of 256 channels diverged at learning rate 2e-3 in
    post-norm order and trained in pre-norm order.

    The positional arguments are :class:`~torch_geometric.nn.conv.GPSConv`'s,
    in its order, so a PyG model ports by renaming the class:
    ``GPSConv(channels, conv, heads=4, attn_type='multihead',
    attn_kwargs={'dropout': 0.5})`` becomes ``SamsaConv(...)`` with the same
    arguments, and attends to :obj:`k` sampled keys per graph and head. The
    SAMSA arguments (:obj:`k`, and the options of
    :class:`~samsa_geo.nn.SamsaAttention` in ``attn_kwargs``) are keyword-only.

    Args:
        channels (int): Size of each input and output sample.
        conv (MessagePassing, optional): Local message passing layer, called
            as ``conv(x, edge_index, **kwargs)``. (default: :obj:`None`)
        heads (int, optional): Attention heads. (default: :obj:`1`)
        dropout (float, optional): Dropout after the residual branches.
            (default: :obj:`0.0`)
        act (str or Callable, optional): MLP activation.
            (default: :obj:`"relu"`)
        act_kwargs (Dict[str, Any], optional): Arguments of ``act``.
        norm (str or Callable, optional): Normalisation, resolved as in PyG
            (:obj:`"batch_norm"`, :obj:`"layer_norm"`, :obj:`"graph_norm"`,
            ...); :obj:`None` for none. (default: :obj:`"batch_norm"`)
        norm_kwargs (Dict[str, Any], optional): Arguments of ``norm``.
        attn_type (str, optional): :obj:`"samsa"`, or GPSConv's
            :obj:`"multihead"`, which maps to SAMSA attention (its ``dropout``
            in ``attn_kwargs`` is the dropout on the attention weights, as in
            :class:`torch.nn.MultiheadAttention`). :obj:`"performer"` is
            refused. (default: :obj:`"samsa"`)
        attn_kwargs (Dict[str, Any], optional): Further arguments of
            :class:`~samsa_geo.nn.SamsaAttention` (``dropout``,
            ``sampling``, ``num_registers``, ``score``, ...).
            (default: :obj:`None`)
        k (int or float, optional): Keys kept per set and head, keyword-only.
            (default: :obj:`64`)
        norm_first (bool, optional): Pre-norm instead of GPSConv's
            post-norm order, keyword-only. (default: :obj:`False`)

    .. note::
        Pass the sizes of a PyG ``Batch`` to every call,
        ``conv(x, edge_index, batch, **batch_hints(data))`` (see
        :func:`~samsa_geo.nn.batch_hints`): the forward pass then never
        waits for the GPU, and ``torch.compile(..., dynamic=True)`` traces
        it into one graph for every batch layout. Without them the sizes
        are read back from ``batch`` once per batch tensor (a device sync);
        compiled, the layer breaks its graph at that read-back (the number
        of sets) and uses bound shapes after it, so new layouts still need
        no recompilation. PyG resolves
        ``norm='layer_norm'`` to graph-mode LayerNorm, which reads
        ``batch`` again; ``norm_kwargs={'mode': 'node'}`` normalises per
        token. With the sizes given, calls on CUDA whose shapes repeat
        replay CUDA graphs of the layer: inference calls from their third
        call on, training calls (forward and backward) once two of them
        have run their backward pass (one launch per pass instead of
        dozens; see :func:`~samsa_geo.nn.attention.config.use_cuda_graphs`).
        ``batch`` may be :obj:`torch.long` or :obj:`torch.int32` (taken as
        long, for every norm and the attention). Hints below the sizes in
        ``batch`` raise a :class:`ValueError` naming them where values are
        checked (the CPU; CUDA in debug mode), before any norm runs.
        :func:`torch.export.export` with a ``batch`` vector needs
        ``num_graphs`` (a named :class:`ValueError` otherwise).

    .. warning::
        Inference calls keep values between calls: the batch norms'
        per-channel scale and shift, the MLP's weights cast to autocast's
        dtype, the attention's stacked projection weights (see
        :class:`~samsa_geo.nn.SamsaAttention`) and, on CUDA, the graphs
        that read them. Each is remade when a tensor it came from changes
        as PyTorch records it: an in-place op on the parameter or buffer
        itself (under :func:`torch.no_grad`, as optimisers, EMA updates
        with :func:`torch._foreach_lerp_` and
        :meth:`~torch.nn.Module.load_state_dict` write them), or a
        parameter replaced or moved (:meth:`~torch.nn.Module.to`); and
        :meth:`~torch.nn.Module.train` / :meth:`~torch.nn.Module.eval`
        drop them all. A write through ``.data`` (``p.data.mul_(0.5)``,
        ``p.data.copy_(q)``) bumps no version counter and is **not** seen:
        later inference calls read the values kept from the old
        parameters until ``.eval()`` is called again. Checking the values
        on every call would stall the GPU.

    Shapes:
        - **input:** ``x`` :math:`(N, C)`, ``edge_index`` :math:`(2, E)`
          (or a sparse adjacency :math:`(N, N)`, as
          :class:`~torch_geometric.nn.conv.GPSConv` takes it),
          ``batch`` :math:`(N)`, ``pos`` :math:`(N, P)`
        - **output:** :math:`(N, C)`; with ``return_attention_weights=True``
          also ``(indices, alpha)``: the :math:`(B, H, k_{\max})` global
          indices of the tokens each graph's head attended to (``-1`` for
          unused slots, ``-2 - r`` for register ``r``, as
          :class:`~samsa_geo.nn.SamsaAttention` returns them) and
          :math:`(N, H, k_{\max})` attention weights of each token over them
          (:math:`(N, H, k_{\max} + 1)` with ``summary=True`` in
          ``attn_kwargs``: the summary key's weight last; :obj:`None` where
          the attention does not report weights)
    """
    def __init__(
        self,
        channels: int,
        conv: Optional[Module] = None,
        heads: int = 1,
        dropout: float = 0.0,
        act: str = 'relu',
        act_kwargs: Optional[Dict[str, Any]] = None,
        norm: Optional[str] = 'batch_norm',
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_type: str = 'samsa',
        attn_kwargs: Optional[Dict[str, Any]] = None,
        *,
        k: Union[int, float] = 64,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        if (isinstance(dropout, bool)
                or not isinstance(dropout, (int, float))
                or not 0.0 <= dropout < 1.0):
            # Catches SAMSA's k passed where GPSConv's dropout sits.
            raise ValueError(f"Expected 'dropout' to be a float in [0, 1) "
                             f"(got {dropout!r}); 'k' is keyword-only: "
                             f"SamsaConv(channels, conv, heads, dropout, "
                             f"..., k=64)")
        if conv is not None and not isinstance(conv, Module):
            raise TypeError(f"Expected 'conv' to be a Module (a message "
                            f"passing layer) or None "
                            f"(got {type(conv).__name__})")
        check_bool('norm_first', norm_first)
        act_kwargs = check_kwargs('act_kwargs', act_kwargs)
        norm_kwargs = check_kwargs('norm_kwargs', norm_kwargs)
        attn_kwargs = check_kwargs('attn_kwargs', attn_kwargs)
        self.norm_first = norm_first
        self.conv = conv
        self.dropout = dropout
        attn_kwargs = _samsa_kwargs(attn_type, attn_kwargs)
        self.attn = SamsaAttention(channels, heads=heads, k=k, **attn_kwargs)
        # As the attention checked them: Python ints (of NumPy ones too).
        channels = self.channels = self.attn.channels
        self.heads = self.attn.heads
        self.mlp = Sequential(
            Linear(channels, channels * 2),
            _resolve('act', act, activation_resolver, **act_kwargs),
            Dropout(dropout),
            Linear(channels * 2, channels),
            Dropout(dropout),
        )
        self.norm1 = None  # only the local branch uses it
        if conv is not None:
            self.norm1 = _resolve('norm', norm, normalization_resolver,
                                  channels, **norm_kwargs)
        self.norm2 = _resolve('norm', norm, normalization_resolver, channels,
                              **norm_kwargs)
        self.norm3 = _resolve('norm', norm, normalization_resolver, channels,
                              **norm_kwargs)
        self.norm_with_batch = self.norm_with_size = False
        if self.norm2 is not None:
            params = inspect.signature(self.norm2.forward).parameters
            self.norm_with_batch = 'batch' in params
            self.norm_with_size = 'batch_size' in params
        # Inference-only values kept between calls (see _mlp and
        # _eval_affine); train() / eval() drop them.
        self._mlp_cache: Optional[tuple] = None
        self._affine_cache: Dict[int, tuple] = {}
        # CUDA graphs of inference calls (see _replay and
        # config.use_cuda_graphs); they read the caches above, so they go
        # with them. Training graphs read no cache: they outlive
        # train() / eval().
        self._graphs = GraphReplay()
        self._train_graphs = TrainingGraphReplay(pin_inputs=True)
        # What the graphs bake in of the submodules, read on each call.
        self._module_tree = ModuleTree()

    def train(self, mode: bool = True) -> 'SamsaConv':
        self._drop_kept_values()
        return super().train(mode)

    def _drop_kept_values(self) -> None:
        # The casts, affine maps and inference graphs kept between calls.
        self._mlp_cache = None
        self._affine_cache = {}
        self._graphs.clear()

    def __getstate__(self) -> Dict[str, Any]:
        # Copies and pickles (deepcopy, torch.save of the module) hold no
        # kept values: theirs are stamped with this process's storage and
        # keyed by its module ids. A copy makes its own at its first call.
        return dict(super().__getstate__(), _mlp_cache=None,
                    _affine_cache={})

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half(), ...: new storage for the parameters, which
        # may take the old one's address and version (.half().float()), so
        # the kept values go with the graphs.
        self._drop_kept_values()
        self._train_graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()
        self.attn.reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def _norm_module(self, i: int) -> Optional[Module]:
        # norm1, norm2 or norm3, read from the module dictionary (no
        # Module.__getattr__ call; norm1 is None without a local conv).
        return self._modules.get(_NORMS[i])

    def _norm(self, norm: Optional[Module], h: Tensor,
              batch: Optional[Tensor], num_graphs: Optional[int]) -> Tensor:
        if norm is None:
            return h
        if isinstance(norm, BatchNorm) and not is_tracing() \
                and h.dim() == 2:
            if norm._modules['module'].training:
                # Over the real rows of a padded batch (counted_rows),
                # else straight to the batch norm's kernel.
                out = counted_batch_norm(norm._modules['module'], h)
                if out is None:
                    out = _training_batch_norm(norm, h)
                if out is not None:
                    return out
            else:
                affine = self._eval_affine(norm, h.dtype)
                if affine is not None:  # h * scale + shift, one launch
                    return torch.addcmul(affine[1], h, affine[0])
        if isinstance(norm, LayerNorm) and norm.mode == 'node':
            # Per token, as PyG's: its kernel serves inference on CUDA.
            return layer_norm(h, norm.weight, norm.bias, norm.eps)
        if self.norm_with_size and (num_graphs is not None
                                    or h.size(0) == 0):
            # A graph-level norm that knows B does not read it back (an
            # empty batch vector has none to read: PyG's norms fail there).
            return norm(h, batch=batch, batch_size=1 if num_graphs is None
                        else num_graphs)
        if self.norm_with_batch:
            return norm(h, batch=batch)
        return norm(h)

    def _add_norm(self, i: int, x: Tensor, h: Tensor,
                  batch: Optional[Tensor], num_graphs: Optional[int],
                  copy_dtype: Optional[torch.dtype] = None,
                  ) -> Tuple[Tensor, Optional[Tensor]]:
        # norm_i(x + h). A batch norm runs with the sum in few kernels,
        # which also write the copy in copy_dtype that the next autocast
        # GEMM reads: in evaluation (see _eval_affine) as one
        # (residual_affine), in training as residual_batch_norm (from
        # TRAINING_BATCH_NORM_MIN_ELEMENTS values). Other norms return no
        # copy.
        norm = self._norm_module(i)
        if isinstance(norm, BatchNorm) and x.dim() == 2 \
                and not is_tracing() and counted_rows_mask() is None:
            bn = norm._modules['module']
            if bn.training and x.numel() < TRAINING_BATCH_NORM_MIN_ELEMENTS:
                # Small inputs (batches of small graphs), bound by the
                # host: the sum, then the batch norm's own kernel.
                y = x + h
                out = _training_batch_norm(norm, y)
                if out is None:  # a subclass, a hook, one row, ...
                    out = self._norm(norm, y, batch, num_graphs)
                return out, None
            dtype = promoted_float(x.dtype, h.dtype)
            if dtype != torch.float32:  # autocast casts float32 only
                copy_dtype = None
            if (bn.training and x.size(0) > 1 and (
                    bn.momentum is not None
                    or not bn.track_running_stats)):
                if bn.track_running_stats:  # as BatchNorm1d.forward
                    bn.num_batches_tracked.add_(1)
                return residual_batch_norm(
                    x, h, bn.weight, bn.bias, bn.running_mean,
                    bn.running_var, momentum=bn.momentum or 0.0,
                    eps=bn.eps, copy_dtype=copy_dtype)
            affine = None if bn.training or needs_grad(x, h) else \
                self._eval_affine(norm, dtype)
            if affine is not None:
                return residual_affine(x, h, affine[0], affine[1],
                                       copy_dtype=copy_dtype)
        return self._norm(norm, x + h, batch, num_graphs), None

    def _eval_affine(self, norm: BatchNorm,
                     dtype: torch.dtype) -> Optional[Tuple[Tensor, Tensor]]:
        # In evaluation a BatchNorm with running statistics is the affine
        # map h * s + t per channel, s = w / sqrt(var + eps) and
        # t = b - mean * s: one launch instead of the three of PyTorch's
        # kernel, with s and t kept between calls while the statistics and
        # parameters are unchanged (kept_while_unchanged). None where the
        # module's own forward must run: in training, without running
        # statistics, for another dtype than the statistics', where a
        # gradient reaches w or b, or where a hook would run (as in
        # training, see _training_batch_norm).
        bn = norm.module
        if bn.training or hooked(norm, bn):
            return None
        mean, var = bn.running_mean, bn.running_var
        params = [p for p in (bn.weight, bn.bias) if p is not None]
        if (mean is None or var is None or dtype != mean.dtype
                or needs_grad(*params)):
            return None

        def affine() -> 'Tuple[Tensor, Tensor]':
            scale = torch.rsqrt(var + bn.eps)  # [C]
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -mean * scale  # [C]
            if bn.bias is not None:
                shift = shift + bn.bias
            return scale, shift

        slot = id(norm)  # one entry per norm module
        cached = kept_while_unchanged(self._affine_cache.get(slot),
                                      (mean, var, *params), affine, bn.eps)
        self._affine_cache[slot] = cached
        return cached[1], cached[2]

    def forward(
        self,
        x: Tensor,
        edge_index: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Optional[Tensor]]]]:
        r"""Runs the layer; extra keyword arguments (``edge_attr``, ...) go
        to ``conv`` (without one they are ignored, as
        :class:`~torch_geometric.nn.conv.GPSConv` ignores them).
        ``normal``, ``num_graphs`` and ``max_num_nodes`` are passed to the
        attention. With ``return_attention_weights=True``
        returns ``(out, (indices, alpha))``, as
        :class:`~torch_geometric.nn.conv.TransformerConv` returns
        ``(out, (edge_index, alpha))``."""
        attn_kwargs = {key: kwargs.pop(key) for key in
                       ('normal', 'num_graphs', 'max_num_nodes')
                       if key in kwargs}
        if self.conv is not None:  # else the attention checks it first
            check_matrix('x', x, self.channels)
        if (isinstance(x, Tensor) and x.is_floating_point()
                and x.dtype.itemsize > self.attn.lin_q.weight.itemsize):
            # The attention computes in its weights' dtype; the residual
            # branch and the norms would mix the two. (An integer x is
            # refused by the attention's check as not floating-point.)
            raise TypeError(f"Expected 'x' in the layer's dtype "
                            f"{self.attn.lin_q.weight.dtype} or a narrower "
                            f"one (got {x.dtype}); convert the layer (e.g. "
                            f"'conv.double()') or 'x'")
        if is_sparse(edge_index):
            # A sparse adjacency (PyG's Adj, as GPSConv takes): the local
            # conv reads it, so it must span the N tokens.
            N = check_matrix('x', x, self.channels).size(0)
            if edge_index.dim() != 2 or list(edge_index.size()) != [N, N]:
                raise ValueError(f"Expected a sparse 'edge_index' (adjacency) "
                                 f"of shape [{N}, {N}] "
                                 f"(got {list(edge_index.size())})")
        elif edge_index is not None:
            if isinstance(edge_index, Tensor) and edge_index.dim() == 1:
                raise ValueError(
                    f"Expected 'edge_index' of shape [2, E] (got "
                    f"{list(edge_index.shape)}): pass the batch vector as "
                    f"conv(x, edge_index, batch) or conv(x, batch=batch)")
            check_edge_index(edge_index)
        if self.conv is not None and edge_index is None:
            raise ValueError("Expected 'edge_index' of shape [2, E] "
                             "since a local 'conv' is set")
        if isinstance(batch, Tensor) and batch.dtype != torch.long:
            # int32 (accepted by the attention) as long once, so that
            # PyG's graph-level norms, which scatter with it, take it too.
            check_batch_vector(batch,
                               check_matrix('x', x, self.channels).size(0))
            batch = batch.long()
        if batch is not None and self.norm_first and self.norm_with_batch:
            # A graph-level norm runs before the attention and reads the
            # hints: checked here first, as the attention checks them (its
            # own check then reads the sizes cached on 'batch').
            check_hints(batch, attn_kwargs.get('num_graphs'),
                        attn_kwargs.get('max_num_nodes'),
                        config.checks_values(x.device))
        if self.training and x.size(0) == 1:
            _check_single_token(self)
        if (config.use_cuda_graphs() and isinstance(x, Tensor) and x.is_cuda
                and self.conv is None and not return_attention_weights
                and not kwargs):
            out = self._replay(x, batch, pos, attn_kwargs)
            if out is not None:
                return out
        return self._forward(x, edge_index, batch, pos,
                             return_attention_weights, attn_kwargs, kwargs)

    def _replay(self, x: Tensor, batch: Optional[Tensor],
                pos: Optional[Tensor],
                attn_kwargs: Dict[str, Any]) -> Optional[Tensor]:
        # The call as the replay of a CUDA graph (config.use_cuda_graphs),
        # or None where it runs eagerly: no hooks, tracing or value checks
        # (a replay runs no Python), the sizes of the sets given, up to
        # CUDA_GRAPH_MAX_ELEMENTS input values (beyond, the GPU's work
        # outlasts the host's, and the copy in would add to it).
        num_graphs = attn_kwargs.get('num_graphs')
        max_num_nodes = attn_kwargs.get('max_num_nodes')
        if ('normal' in attn_kwargs or x.numel() > CUDA_GRAPH_MAX_ELEMENTS
                or (batch is not None and (num_graphs is None
                                           or max_num_nodes is None))
                or is_tracing() or config.is_debug()
                or torch.cuda.is_current_stream_capturing()):
            return None
        inputs = (x, ) if batch is None else (x, batch)
        # The key's cheap part. An inference call without gradients
        # replays the last call's graph where the inputs and this part are
        # the last call's, before the rest of the key is built and the
        # state stamped; self._graphs then confirms that graph or leaves
        # its output unread (see GraphReplay.speculate).
        head = (num_graphs, max_num_nodes,
                None if pos is None else (pos.shape, pos.dtype),
                torch.is_autocast_enabled('cuda'),
                torch.get_autocast_dtype('cuda'),
                torch.is_inference_mode_enabled())
        hint = speculated = None
        if not (self.training or torch.is_grad_enabled()):
            hint = head
            speculated = self._graphs.speculate(inputs, hint)
        tree = self._module_tree.read(self)
        if tree.hooked():
            return None
        key = (head, torch.get_float32_matmul_precision(), config.snapshot(),
               tree.settings())
        if self.training:
            return self._replay_training(x, batch, pos, attn_kwargs,
                                         tree.modules, tree.params(),
                                         tree.buffers(), key)
        if torch.is_grad_enabled() and needs_grad(x, *tree.params()):
            return None
        attn = self.attn

        def eligible() -> bool:
            # The fused path, which never synchronises and draws no noise.
            # (norm1 serves the local conv only: None here.)
            return (_plain_norms(self)
                    and attn._runs_fused(x, batch, pos, num_graphs,
                                         max_num_nodes))

        # (Annotations of nested functions as strings: subscripted types
        # would be built again at every call.)
        def state() -> 'List[Optional[Tensor]]':
            # Parameters, buffers and the casts kept between calls
            # (dropped by train(), made again when a parameter changes),
            # read once the inputs' copies are launched.
            out = tree.params() + tree.buffers()
            for cache in (self._mlp_cache, attn._projection_cache,
                          *self._affine_cache.values()):
                if cache is not None:
                    out += [t for t in cache[1:] if isinstance(t, Tensor)]
            return out

        # Graphs replay the fused path, which reads no positions, up to the
        # last step: that one runs after the replay, on its output buffers,
        # and writes the call's own output (no copy of the graph's).
        return self._graphs(
            lambda x, batch=None: self._body(x, None, batch, None, False,
                                             attn_kwargs, {})[:2],
            inputs, key, state, eligible,
            finish=lambda out, h: self._tail(out, h, batch, num_graphs),
            hint=hint, speculated=speculated)

    def _replay_training(self, x: Tensor, batch: Optional[Tensor],
                         pos: Optional[Tensor], attn_kwargs: Dict[str, Any],
                         modules: List[Module], params: List[Tensor],
                         buffers: List[Tensor], key: tuple,
                         ) -> Optional[Tensor]:
        # A training call through TrainingGraphReplay, or None where it
        # runs eagerly: every parameter trained (no kept casts to read),
        # autograd in a state that allows a capture
        # (autograd_allows_capture), positions without gradients.
        if (not params or not all(p.requires_grad for p in params)
                or not autograd_allows_capture()
                or (pos is not None and pos.requires_grad)):
            return None
        inputs = [x]
        if batch is not None:
            inputs.append(batch)
        if pos is not None:
            inputs.append(pos)

        num_graphs = attn_kwargs.get('num_graphs')
        finish = None
        if self._tail_writes_grads(x):
            # The last step runs after the replay: its output is the
            # call's own and its backward pass writes the gradients where
            # the backward graph reads them (no copy out, none in).
            def finish(out: Tensor, h: Tensor) -> Tensor:
                return self._tail(out, h, batch, num_graphs)

        def fn(x: Tensor, *rest: Tensor) -> Any:
            batch_ = rest[0] if batch is not None else None
            pos_ = rest[-1] if pos is not None else None
            if finish is not None:
                return self._body(x, None, batch_, pos_, False, attn_kwargs,
                                  {})[:2]
            return self._forward(x, None, batch_, pos_, False, attn_kwargs,
                                 {})

        def slots() -> 'List[Tuple[Module, str]]':
            # Where params live, in their order (asked at a capture).
            return [(m, name) for m in modules
                    for name, p in m._parameters.items() if p is not None]

        return self._train_graphs(fn, inputs, params, key,
                                  lambda: params + buffers,
                                  self._trains_in_graphs, slots, finish)

    def _tail_writes_grads(self, x: Tensor) -> bool:
        # Whether the last step of a training call on x runs as
        # residual_batch_norm (see _add_norm), whose backward pass writes
        # the gradients of its inputs into given buffers.
        norm = self._norm_module(2)
        return (not self.norm_first and isinstance(norm, BatchNorm)
                and x.numel() >= TRAINING_BATCH_NORM_MIN_ELEMENTS)

    def _trains_in_graphs(self) -> bool:
        # Whether a training call of this layer may be captured in a CUDA
        # graph (asked once per signature, by the layer's graphs and by a
        # model that captures its steps whole). A cumulative batch norm
        # reads its count back each call. The attention's options are
        # those whose graphs the GPU tests compare with eager steps: a
        # capture that fails midway may leave the random number generator
        # unusable, so other paths train eagerly.
        norms = [m.module for m in (self.norm1, self.norm2, self.norm3)
                 if isinstance(m, BatchNorm)]
        attn = self.attn
        return (_plain_norms(self) and all(
            bn.momentum is not None or not bn.track_running_stats
            for bn in norms)
            and attn.sampling == 'hard' and attn.score == 'dot'
            and attn.normalization == 'softmax'
            and attn.rel_bias is None and not attn.summary
            and attn.num_registers == 0 and not attn.scorer_norm)

    def _forward(self, x: Tensor, edge_index: Optional[Tensor],
                 batch: Optional[Tensor], pos: Optional[Tensor],
                 return_attention_weights: Optional[bool],
                 attn_kwargs: Dict[str, Any], kwargs: Dict[str, Any],
                 ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor,
                                                        Optional[Tensor]]]]:
        out, h, weights = self._body(x, edge_index, batch, pos,
                                     return_attention_weights, attn_kwargs,
                                     kwargs)
        out = self._tail(out, h, batch, attn_kwargs.get('num_graphs'))
        if return_attention_weights:
            return out, weights
        return out

    def _body(self, x: Tensor, edge_index: Optional[Tensor],
              batch: Optional[Tensor], pos: Optional[Tensor],
              return_attention_weights: Optional[bool],
              attn_kwargs: Dict[str, Any], kwargs: Dict[str, Any],
              ) -> Tuple[Tensor, Tensor, Optional[Tuple[Tensor,
                                                        Optional[Tensor]]]]:
        # The layer up to its last step: Y, MLP(.) of it, and the
        # attention's (indices, weights) where asked for.
        num_graphs = attn_kwargs.get('num_graphs')
        weights = None
        if return_attention_weights:
            attn_kwargs = dict(attn_kwargs, return_indices=True,
                               return_weights=True)

        def norm(i: int, h: Tensor) -> Tensor:
            return self._norm(self._norm_module(i), h,
                              batch, num_graphs)

        def drop(h: Tensor) -> Tensor:
            if self.dropout == 0.0 or not self.training:
                return h
            return F.dropout(h, p=self.dropout, training=True)

        pre = self.norm_first
        local = None
        if self.conv is not None:
            local = drop(self.conv(norm(0, x) if pre else x, edge_index,
                                   **kwargs))
        h = self.attn(norm(1, x) if pre else x, batch, pos=pos, **attn_kwargs)
        if return_attention_weights:
            h, indices, alpha = h
            weights = (indices, alpha)
        h = drop(h)
        if pre:  # X + MPNN(N1(X)) + SAMSA(N2(X)), then + MLP(N3(Y))
            out = x + h if local is None else x + local + h
            return out, self._mlp(norm(2, out)), weights
        else:  # GPSConv: N3(Y + MLP(Y)), Y = N1(MPNN + X) + N2(SAMSA + X)
            # Where autocast runs the MLP, Y's copy in its dtype comes from
            # the norm's kernel (see _add_norm).
            copy_dtype = None
            if local is None and torch.is_autocast_enabled(x.device.type):
                copy_dtype = torch.get_autocast_dtype(x.device.type)
            out, out_copy = self._add_norm(1, h, x, batch, num_graphs,
                                           copy_dtype)
            if local is not None:
                out = self._add_norm(0, local, x, batch, num_graphs)[0] + out
            return out, self._mlp(out, out_copy), weights

    def _tail(self, out: Tensor, h: Tensor, batch: Optional[Tensor],
              num_graphs: Optional[int]) -> Tensor:
        # The last step, Y + MLP(N3(Y)) or N3(Y + MLP(Y)): a new tensor
        # (a replay runs it on the graph's buffers, see _replay).
        if self.norm_first:
            return out + h
        return self._add_norm(2, out, h, batch, num_graphs)[0]

    def _mlp(self, h: Tensor, h_copy: Optional[Tensor] = None) -> Tensor:
        # self.mlp holds the parameters (state_dict, reset_parameters,
        # repr); calling its layers functionally saves their dispatch on
        # the host, and dropout of p = 0 costs nothing.
        # Under autocast, where gradients flow, the four parameters are
        # cast in one go (see stacked_cast); in inference their casts are
        # kept between calls (see cached_stacked_cast). Traced graphs leave
        # the casts to the compiler. h_copy is h in autocast's dtype, where
        # the caller has it.
        mlp = self._modules['mlp']._modules
        lin1, act, drop1, lin2, drop2 = mlp.values()
        if hooked(lin1, act, drop1, lin2, drop2):
            # A hook on a layer of the MLP (one that records activations,
            # PyTorch's hook-based spectral_norm or pruning, which set the
            # weight in a pre-hook) runs where the modules are called.
            return self._modules['mlp'](h)
        w1, b1, w2, b2 = lin1.weight, lin1.bias, lin2.weight, lin2.bias
        device = h.device.type
        autocast = torch.is_autocast_enabled(device)
        if autocast and not is_tracing():
            groups = [[w1], [b1], [w2], [b2]]
            dtype = torch.get_autocast_dtype(device)
            if not needs_grad(w1, b1, w2, b2):  # inference: kept casts
                self._mlp_cache, (w1, b1, w2, b2) = cached_stacked_cast(
                    self._mlp_cache, groups, dtype)
            elif config.use_stacked_casts():
                w1, b1, w2, b2 = stacked_cast(groups, dtype)
        h = h if h_copy is None else h_copy
        # Inference: the ReLU as the GEMM's epilogue (cuBLASLt), one launch
        # and no [N, 2C] round trip; under autocast the input is cast
        # here, as F.linear would cast it. The op has no autograd formula,
        # and traced graphs leave the fusion to the compiler.
        relu = type(act) is ReLU
        epilogue = (relu and b1 is not None and h.dim() == 2
                    and not needs_grad(h, w1, b1) and not is_tracing())
        if epilogue and h.dtype == torch.float32 and autocast:
            h = h.to(torch.get_autocast_dtype(device))
        if epilogue and h.dtype == w1.dtype == b1.dtype:
            h = torch._addmm_activation(b1, h, w1.t())
        elif relu:  # ReLU's call, without its frames
            h = torch.relu(linear_unchecked(h, w1, b1))
        else:
            h = act(linear_unchecked(h, w1, b1))
        if drop1.p > 0.0 and self.training:
            h = F.dropout(h, p=drop1.p, training=True)
        h = linear_unchecked(h, w2, b2)
        if drop2.p > 0.0 and self.training:
            h = F.dropout(h, p=drop2.p, training=True)
        return h

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'conv={self.conv}, heads={self.heads}, k={self.attn.k}, '
                f'sampling={self.attn.sampling!r}'
                f'{", norm_first=True" if self.norm_first else ""})')


#: The layer's norms, by their index in _norm_module.
_NORMS = ('norm1', 'norm2', 'norm3')


def _training_batch_norm(norm: BatchNorm, h: Tensor) -> Optional[Tensor]:
    # PyG's BatchNorm in training on a 2-d h, as its module call computes
    # it (BatchNorm1d's forward: the batch count, then the batch
    # statistics and the running averages of a fixed momentum), with
    # none of the three Python frames of the calls in between, and the
    # tensors read from the module's dictionaries (no Module.__getattr__
    # call each): the small-graph model's training forward took 6 % less
    # host time on the CPU without the frames. None where the module call
    # must run: a subclass, a hook, a single row (its error, or PyG's
    # allow_single_element), a cumulative average (momentum None, a
    # read-back of the count).
    bn = norm._modules['module']
    if (type(norm) is not BatchNorm or type(bn) is not BatchNorm1d
            or h.size(0) <= 1 or bn.momentum is None
            or hooked(norm, bn)):
        return None
    params, buffers = bn._parameters, bn._buffers
    running_mean = running_var = None
    if bn.track_running_stats:
        buffers['num_batches_tracked'].add_(1)
        running_mean, running_var = (buffers['running_mean'],
                                     buffers['running_var'])
    return torch.batch_norm(h, params['weight'], params['bias'],
                            running_mean, running_var, True, bn.momentum,
                            bn.eps, torch._C._get_cudnn_enabled())


def _check_single_token(layer: 'SamsaConv') -> None:
    # A batch norm in training needs two tokens or more (its variance):
    # torch's own error would name no argument.
    for norm in (layer.norm1, layer.norm2, layer.norm3):
        if (isinstance(norm, BatchNorm) and norm.module.training
                and not norm.allow_single_element):
            raise ValueError(
                "Expected 'x' to hold more than one token in training since "
                "norm='batch_norm' (got 1): batch several graphs, use "
                "norm='layer_norm', or pass norm_kwargs="
                "{'allow_single_element': True}")


def _plain_norms(layer: 'SamsaConv') -> bool:
    # Whether the layer's norms are batch or layer norms (or none), which
    # read no sizes back (norm1, of the local conv, is None without one).
    return all(norm is None or isinstance(norm, (BatchNorm, LayerNorm))
               for norm in (layer.norm1, layer.norm2, layer.norm3))


# torch.nn.MultiheadAttention arguments that GPSConv's 'multihead' takes and
# SAMSA has no counterpart for.
_MULTIHEAD_ONLY = ('bias', 'add_bias_kv', 'add_zero_attn', 'kdim', 'vdim')


def _resolve(name: str, query: Any, resolver: Any, *args: Any,
             **kwargs: Any) -> Any:
    # PyG's resolver of `act` / `norm`, with errors that name the argument.
    if name == 'norm' and query is None:
        return None
    if isinstance(query, str):
        try:
            return resolver(query, *args, **kwargs)
        except ValueError as error:
            if not str(error).startswith('Could not resolve'):
                raise  # the layer's own error, e.g. of its kwargs
            kind = 'an activation' if name == 'act' else 'a normalization'
            raise ValueError(f"Expected '{name}' to be the name of {kind} "
                             f"layer known to PyG, e.g. {_EXAMPLES[name]} "
                             f"(got {query!r})") from error
    if name == 'act' and not isinstance(query, Module):
        raise TypeError(f"Expected 'act' to be a str or a Module "
                        f"(got {type(query).__name__})")
    if name == 'norm' and not callable(query):
        raise TypeError(f"Expected 'norm' to be a str, a Module or None "
                        f"(got {type(query).__name__})")
    return resolver(query, *args, **kwargs)


_EXAMPLES = {'act': "'relu' or 'gelu'",
             'norm': "'batch_norm', 'layer_norm' or 'graph_norm'"}


def _samsa_kwargs(attn_type: str,
                  attn_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    # Maps GPSConv's (attn_type, attn_kwargs) onto SamsaAttention's arguments
    # (a copy of attn_kwargs, checked by the caller).
    if attn_type == 'performer':
        raise ValueError(
            "SamsaConv's global attention is SAMSA, not a Performer: drop "
            "'attn_type' (or write attn_type='samsa') and set the keys kept "
            "per graph and head with 'k', e.g. SamsaConv(channels, conv, "
            "heads=4, k=64); Performer options in 'attn_kwargs' have no "
            "counterpart")
    if attn_type not in ('samsa', 'multihead'):
        raise ValueError(f"Expected 'attn_type' to be 'samsa' or GPSConv's "
                         f"'multihead' (got {attn_type!r})")
    if attn_type == 'multihead':
        attn_kwargs.pop('batch_first', None)  # GPSConv's own layout flag
        unsupported = sorted(set(attn_kwargs) & set(_MULTIHEAD_ONLY))
        if unsupported:
            raise ValueError(
                f"attn_type='multihead' arguments {unsupported} have no SAMSA "
                f"counterpart: remove them from 'attn_kwargs' (SAMSA "
                f"projections always have biases; 'dropout' is supported)")
    return attn_kwargs
