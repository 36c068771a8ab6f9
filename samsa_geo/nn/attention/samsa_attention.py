import math
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module, Parameter

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._attend import (
    biased_attention,
    explicit_attention,
    sdpa_attention,
)
from samsa_geo.nn.attention._dense import dense_layout, sets_attention
from samsa_geo.nn.attention._dispatch import (
    FUSED_MAX_HEAD_DIM,
    FUSED_MAX_SET_SIZE,
    FUSED_SAMPLED_ROWS_MIN_TOKENS,
    SAMPLED_ROWS_MIN_TOKENS,
    TRAINING_SAMPLED_ROWS_MIN_TOKENS,
    is_capturing,
    is_exporting,
    is_tracing,
    needs_grad,
    selection_chunks,
    triton_serves,
)
from samsa_geo.nn.attention._flex import PairGeometry, flex_supported
from samsa_geo.nn.attention._fused_inference import (
    fused_sampled_attention,
    order_by_score,
)
from samsa_geo.nn.attention._relax import relax, relax_rows
from samsa_geo.nn.attention._sampling import (
    Selection,
    gather_rows,
    keep_all,
    project_rows,
    select,
)
from samsa_geo.nn.attention._module_tree import (
    ModuleTree,
    trace_hooks_of,
)
from samsa_geo.nn.attention._score_grad import ScoredRows
from samsa_geo.nn.attention._sets import (
    SetInfo,
    bounded_size_hint,
    check_exportable,
    check_size_hint,
    checked_sizes,
    set_info,
)
from samsa_geo.nn.attention._sft_sampling import sft_sample
from samsa_geo.nn.attention._stacked import (
    cached_stacked_cast,
    stacked_cast,
)
from samsa_geo.nn.attention._summary import Summary, summarize
from samsa_geo.nn.attention._similarity import SIMILARITIES
from samsa_geo.nn.attention._tiles import (
    Tiles,
    from_tiles,
    make_tiles,
    per_tile,
    to_tiles,
)
from samsa_geo.nn.attention.importance_scorer import ImportanceScorer
from samsa_geo.nn.attention.relative_bias import RelativeBias
from samsa_geo.ops._utils import at_least_float32
from samsa_geo.ops.linear import linear_unchecked
from samsa_geo.ops.validation import (
    check_batch_vector,
    check_bool,
    check_finite,
    check_int,
    check_matrix,
    check_number,
    check_positive_int,
)

SAMPLING_MODES = ('hard', 'soft', 'full', 'sft')
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NORMALIZATIONS = ('softmax', 'leaky')


class SamsaAttention(Module):
    r"""SAMSA sampling self-attention from the `"SAMSA: Efficient Transformer
    for Many Data Modalities" <https://arxiv.org/abs/2408.05391>`_ paper, with
    the options of `"Sampling Foundational Transformer"
    <https://arxiv.org/abs/2408.05822>`_.

    Every head :math:`h` scores the tokens of a set,
    :math:`\mathbf{s}^{(h)} = \mathrm{scorer}(\mathbf{X})_h`, keeps the
    :math:`k` most important ones
    :math:`\mathcal{S}_h = \mathrm{top}\text{-}k(\mathbf{s}^{(h)} +
    \mathbf{g})` (:math:`\mathbf{g} \sim \mathrm{Gumbel}(0, 1)` in training,
    :math:`\mathbf{g} = 0` at inference), and attends from every query to
    these keys only:

    .. math::
        \mathbf{o}_i^{(h)} = \sum_{j \in \mathcal{S}_h}
        \mathrm{softmax}_j\left(\frac{\mathbf{q}_i^{(h)\top}
        \mathbf{k}_j^{(h)}}{\sqrt{D}}\right) \mathbf{v}_j^{(h)}, \qquad
        \mathbf{x}'_i = \mathbf{W}_o \big\Vert_{h=1}^{H} \mathbf{o}_i^{(h)},

    where :math:`D = C / H`. Keys and values are projected for all tokens
    and sampled per head (one gather moves both). In training the boundary
    at rank :math:`k` is relaxed (see :func:`relax`) so the scorer learns:
    :obj:`"soft"` mixes each kept row with the next :math:`k` rows,
    :obj:`"hard"` keeps the exact rows in the forward pass and passes the
    soft gradient to the scores. Cost :math:`O(N k C)` time and memory; no
    :math:`N \times N` tensor is ever built. A set with
    :math:`n \leq k` tokens gets exact full attention. In inference on
    CUDA (dot scores, softmax, no relative bias, sets of known size up to
    131,072 tokens) the top-:math:`k` selection and the attention over
    the selected rows are two or three Triton kernels (see
    :func:`~samsa_geo.nn.attention.config.set_fused_inference`).

    With ``summary=True`` every query also attends to one summary key per
    set and head, the score-weighted mean of all :math:`n + R` candidates
    counted for the :math:`c = n + R - k` ones not sampled:

    .. math::
        (\bar{\mathbf{k}}^{(h)}, \bar{\mathbf{v}}^{(h)}) = \sum_{j}
        \mathrm{softmax}_j\big(s_j^{(h)}\big)\,
        (\mathbf{k}_j^{(h)}, \mathbf{v}_j^{(h)}), \qquad
        \text{logit } \frac{\mathbf{q}_i^{(h)\top}
        \bar{\mathbf{k}}^{(h)}}{\sqrt{D}} + \log c.

    Args:
        channels (int): Token width :math:`C`.
        heads (int, optional): Number of heads :math:`H`. (default: :obj:`1`)
        k (int or float, optional): Keys kept per set and head; a float in
            :math:`(0, 1]` is a fraction of each set's size (at least one).
            (default: :obj:`64`)
        dropout (float, optional): Dropout on the attention weights.
            (default: :obj:`0.0`)
        sampling (str, optional): :obj:`"hard"`, :obj:`"soft"`,
            :obj:`"full"` (exact full attention, no sampling) or
            :obj:`"sft"`: SFT's sampler (one score per token shared by the
            heads; in training each of the top :math:`k` raw tokens is
            mixed with a random lower-ranked token of its set, weights
            :math:`\mathrm{softplus}(s_i) / (\mathrm{softplus}(s_i) +
            \mathrm{softplus}(s_j))`; keys and values are projected from
            the :math:`k` sampled tokens only; no registers; the relative
            bias uses the top token's position). (default: :obj:`"hard"`)
        temperature (float, optional): :math:`\tau` of the relaxation
            (fixed). (default: :obj:`1.0`)
        num_registers (int, optional): Learnable register tokens added as
            candidates to every set (own scores and key/value rows).
            (default: :obj:`0`)
        score (str, optional): Score function :obj:`"dot"`,
            :obj:`"maxout"` or :obj:`"lily"`. (default: :obj:`"dot"`)
        normalization (str, optional): :obj:`"softmax"` or :obj:`"leaky"`
            :math:`a_{ij} = \mathrm{ReLU}(s_{ij}) / (\sum_j
            \mathrm{ReLU}(s_{ij}) + \sum_j \mathrm{ReLU}(c_j) + \epsilon)`
            with learned per-head leak logits :math:`c_j` of the sampled
            keys. (default: :obj:`"softmax"`)
        relative_bias (bool, optional): Modulate scores with
            :class:`RelativeBias` of the pairwise features
            :math:`\mathbf{r}_{ij} = (\Vert \mathbf{p}_i - \mathbf{p}_j
            \Vert^2, \mathbf{n}_i^\top \mathbf{n}_j)` of ``pos`` (and
            ``normal``, if given). (default: :obj:`False`)
        stochastic_eval (bool, optional): Keep Gumbel noise at inference.
            (default: :obj:`False`)
        padded (bool, optional): Query layout: :obj:`True` pads each set to
            the largest, :obj:`False` uses tiles of ``tile_size`` queries
            (padding-free up to one tile per set); :obj:`None` chooses by
            the padding it would cost. (default: :obj:`None`)
        tile_size (int, optional): Queries per tile of the packed layout;
            where the largest set size is not given, tiles shrink to the
            mean set size (at least 16 queries). (default: :obj:`256`)
        summary (bool, optional): Add a score-pooled *summary key* per set
            and head: the mean of all candidates' key/value rows weighted
            by :math:`\mathrm{softmax}_i(s_{i,h})` of the clean scores,
            standing in for the :math:`c_b = n_b + R - k_b` candidates
            not sampled (attention logit :math:`+\log c_b`; with
            :obj:`"leaky"`, numerator and leak times :math:`c_b`). Every
            query attends to it next to the :math:`k` sampled keys, so
            the scorer gets a gradient from every candidate of every set,
            not only from the boundary at rank :math:`k`; cost
            :math:`O(N C)`. Training and inference alike; no summary
            where a set keeps all its candidates. With ``relative_bias``
            the key sits at the score-weighted mean position and the
            attention takes the explicit path instead of the fused
            kernels. Not with :obj:`"full"` or :obj:`"sft"`.
            (default: :obj:`False`)
        scorer_norm (bool, optional): Apply a LayerNorm to the tokens
            before the importance scorer (``input_norm`` of
            :class:`ImportanceScorer`): the scores no longer follow the
            tokens' scale, and the scorer's first layer leaves the stacked
            projection of :math:`\mathbf{x}` (a GEMM of its own, same
            FLOPs). Not with :obj:`"full"`. (default: :obj:`False`)

    Shapes:
        - **input:** ``x`` :math:`(N, C)`, ``batch`` :math:`(N)` sorted,
          ``pos`` :math:`(N, P)`, ``normal`` :math:`(N, P)`
        - **output:** :math:`(N, C)`; with ``return_indices=True`` also
          :math:`(B, H, k_{\max})` global token indices (``-1`` for unused
          slots, ``-2 - r`` for register ``r``), and with
          ``return_weights=True`` then the weights
          :math:`(N, H, k_{\max})` of each query over its set's indices
          (:math:`k_{\max} + 1` with ``summary=True``: the summary key's
          weight last)

    .. warning::
        Inference calls (no gradient reaching the parameters) keep the
        projection weights stacked into one matrix, and cast to
        autocast's dtype where it is on, between calls. They are remade
        when a parameter they came from changes as PyTorch records it: an
        in-place op on the parameter itself (under :func:`torch.no_grad`,
        as optimisers, EMA updates with :func:`torch._foreach_lerp_` and
        :meth:`~torch.nn.Module.load_state_dict` write it), or a parameter
        replaced or moved (:meth:`~torch.nn.Module.to`); and
        :meth:`~torch.nn.Module.train` / :meth:`~torch.nn.Module.eval`
        drop them. A write through ``.data`` (``p.data.mul_(0.5)``,
        ``p.data.copy_(q)``) bumps no version counter and is **not** seen:
        later inference calls read the weights kept from the old
        parameters until ``.eval()`` is called again. Checking the values
        on every call would stall the GPU.
    """
    def __init__(
        self,
        channels: int,
        heads: int = 1,
        k: Union[int, float] = 64,
        dropout: float = 0.0,
        sampling: str = 'hard',
        temperature: float = 1.0,
        num_registers: int = 0,
        score: str = 'dot',
        normalization: str = 'softmax',
        relative_bias: bool = False,
        stochastic_eval: bool = False,
        padded: Optional[bool] = None,
        tile_size: int = 256,
        summary: bool = False,
        scorer_norm: bool = False,
    ) -> None:
        super().__init__()
        # Python or NumPy ints (as PyG's GPSConv takes), kept as ints.
        if (isinstance(channels, bool) or not isinstance(channels, Integral)
                or channels <= 0):
            raise ValueError(f"Expected 'channels' to be a positive int "
                             f"(got {channels!r})")
        channels = int(channels)
        if (isinstance(heads, bool) or not isinstance(heads, Integral)
                or heads <= 0 or channels % heads):
            raise ValueError(f"Expected 'heads' to be a positive int "
                             f"dividing 'channels'={channels} (got {heads!r})")
        heads = int(heads)
        k = _check_k(k)
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"Expected 'sampling' to be one of "
                             f"{SAMPLING_MODES} (got {sampling!r})")
        if score not in SIMILARITIES:
            raise ValueError(f"Expected 'score' to be one of "
                             f"{tuple(SIMILARITIES)} (got {score!r})")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"Expected 'normalization' to be one of "
                             f"{NORMALIZATIONS} (got {normalization!r})")
        if (isinstance(temperature, bool)
                or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"Expected 'temperature' to be a finite float "
                             f"> 0 (got {temperature!r})")
        check_int('num_registers', num_registers)
        if num_registers < 0:
            raise ValueError(f"Expected 'num_registers' >= 0 "
                             f"(got {num_registers})")
        check_number('dropout', dropout)
        if not 0.0 <= dropout < 1.0:  # also refuses NaN
            raise ValueError(f"Expected 'dropout' in [0, 1) (got {dropout})")
        check_positive_int('tile_size', tile_size)
        for name, flag in (('relative_bias', relative_bias),
                           ('stochastic_eval', stochastic_eval),
                           ('summary', summary),
                           ('scorer_norm', scorer_norm)):
            check_bool(name, flag)
        check_bool('padded', padded, optional=True)
        if scorer_norm and sampling == 'full':
            raise ValueError("Expected 'scorer_norm=False' with "
                             "sampling='full' (it has no scorer)")
        if summary and sampling in ('full', 'sft'):
            raise ValueError(f"Expected 'summary=False' with "
                             f"sampling={sampling!r} (the summary pools "
                             f"the per-head scores of 'hard' and 'soft')")

        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.k = k
        self.dropout = dropout
        self.sampling = sampling
        self.num_registers = num_registers
        self.score = score
        self.normalization = normalization
        self.stochastic_eval = stochastic_eval
        self.padded = padded
        self.tile_size = tile_size
        self.summary = summary
        self.scorer_norm = scorer_norm
        # Fixed, as in the released code (declared there but never trained).
        # The buffer keeps checkpoints complete; ``tau`` is its host copy,
        # so the forward pass never reads it back from the device.
        self.register_buffer('temperature', torch.tensor(float(temperature)))
        self.tau = float(temperature)
        self.register_load_state_dict_post_hook(_refresh_tau)

        self.lin_q = Linear(channels, channels)
        # Row block h holds [k_h, v_h]: one gather moves keys and values.
        self.lin_kv = Linear(channels, 2 * channels)
        self.lin_out = Linear(channels, channels)
        # [1, H, 1]: the head of each row block of a gather (no arange and
        # no view per call).
        self.register_buffer('head_index', torch.arange(heads).view(1, -1, 1),
                             persistent=False)
        self._projection_cache = None
        # Whether a hook is set on a submodule, read per call (see
        # _hooked).
        self._module_tree = ModuleTree()
        trace_hooks_of(self)
        # 'full' attends to every token: no scorer, no register scores.
        full = sampling == 'full'
        if sampling == 'sft' and num_registers > 0:
            raise ValueError("Expected 'num_registers' = 0 with "
                             "sampling='sft' (SFT samples raw tokens only)")
        self.scorer = None if full else ImportanceScorer(
            channels, 1 if sampling == 'sft' else heads, scorer_norm)
        if num_registers > 0:
            self.reg_kv = Parameter(
                torch.empty(num_registers, heads, 2 * self.head_dim))
        else:
            self.register_parameter('reg_kv', None)
        if num_registers > 0 and not full:
            self.reg_score = Parameter(torch.empty(num_registers, heads))
        else:
            self.register_parameter('reg_score', None)
        if normalization == 'leaky':
            self.leak_weight = Parameter(torch.empty(heads, self.head_dim))
            self.leak_bias = Parameter(torch.empty(heads))
        else:
            self.register_parameter('leak_weight', None)
            self.register_parameter('leak_bias', None)
        self.rel_bias = RelativeBias(2, heads) if relative_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_q.reset_parameters()
        self.lin_kv.reset_parameters()
        self.lin_out.reset_parameters()
        if self.scorer is not None:
            self.scorer.reset_parameters()
        if self.reg_kv is not None:
            torch.nn.init.normal_(self.reg_kv, std=0.02)
        if self.reg_score is not None:
            torch.nn.init.normal_(self.reg_score, std=0.02)
        if self.leak_weight is not None:
            torch.nn.init.normal_(self.leak_weight,
                                  std=1.0 / math.sqrt(self.head_dim))
            torch.nn.init.zeros_(self.leak_bias)
        if self.rel_bias is not None:
            self.rel_bias.reset_parameters()

    def _check_shapes(self, x: Tensor, batch: Optional[Tensor],
                      pos: Optional[Tensor], normal: Optional[Tensor]) -> None:
        N = check_matrix('x', x, self.channels).size(0)
        if batch is not None:
            check_batch_vector(batch, N)
        for name, t in (('pos', pos), ('normal', normal)):
            if t is not None and (not isinstance(t, Tensor) or t.dim() != 2
                                  or t.size(0) != N):
                shape = list(t.shape) if isinstance(t, Tensor) else t
                raise ValueError(f"Expected '{name}' to have shape [{N}, P] "
                                 f"(got {shape})")
        if (pos is not None and normal is not None
                and normal.shape != pos.shape):
            raise ValueError(f"Expected 'normal' to have the shape of 'pos' "
                             f"{list(pos.shape)} (got {list(normal.shape)})")
        if self.rel_bias is not None and pos is None:
            raise ValueError("Expected 'pos' of shape [N, P] since "
                             "'relative_bias=True'")

    def _set_info(self, x: Tensor, batch: Optional[Tensor],
                  pos: Optional[Tensor], normal: Optional[Tensor],
                  num_graphs: Optional[int],
                  max_num_nodes: Optional[int]) -> SetInfo:
        # Reads values back from the device only where it must: without a
        # 'num_graphs' hint (once per batch tensor in eager mode), for a
        # fractional k without 'max_num_nodes', and for the value checks
        # (always on the CPU, where they stall nothing; on CUDA only in
        # debug mode).
        N, R, k = x.size(0), self.num_registers, self._k()
        full = self.sampling == 'full'
        check = config.checks_values(x.device) and not is_tracing()
        if check:
            for name, t in (('x', x), ('pos', pos), ('normal', normal)):
                if t is not None:
                    check_finite(t, name)
        if batch is None:
            return set_info(N, None, k, R, full, x.device)
        check_size_hint('num_graphs', num_graphs)
        check_size_hint('max_num_nodes', max_num_nodes)
        max_num_nodes = bounded_size_hint(max_num_nodes, N)
        need_size = isinstance(k, float) or full
        if (num_graphs is None or (need_size and max_num_nodes is None)) \
                and is_tracing():
            # An exported graph cannot read the sizes back: a named error.
            check_exportable(num_graphs, max_num_nodes, need_size)
        if num_graphs is None and is_tracing() and not need_size and N > 0:
            # Compiled without hints: the number of sets alone (one
            # read-back) and bound shapes, so the graph after it does not
            # depend on the layout of the sets.
            return set_info(N, batch, k, R, full, x.device,
                            int(batch[-1]) + 1, None)
        if (num_graphs is None or (need_size and max_num_nodes is None)
                or (check and N > 0)):
            B, n_max = checked_sizes(batch, num_graphs, max_num_nodes)
            if num_graphs is None:
                num_graphs, max_num_nodes = B, n_max
            elif max_num_nodes is None and need_size:
                max_num_nodes = n_max
        return set_info(N, batch, k, R, full, x.device, num_graphs,
                        max_num_nodes)

    @property
    def k(self) -> Union[int, float]:
        r"""Keys kept per set and head (an int, or a fraction of each
        set's size); may be set, with the constructor's checks."""
        return self._k_value

    @k.setter
    def k(self, value: Union[int, float]) -> None:
        value = _check_k(value)
        self._k_value = value
        # A fraction also as an exact ratio of ints (see _k).
        self._k_ratio = None if isinstance(value, int) else \
            float(value).as_integer_ratio()

    def _k(self) -> Union[int, float]:
        # k as a constant of a compiled graph: with dynamic shapes Dynamo
        # makes a float attribute symbolic (float() keeps it so), and the
        # sizes computed from it reach the relaxation's backward pass,
        # which Dynamo cannot lift them into. Ints of a module are
        # constants: a fraction is rebuilt from its ratio (a new fraction
        # recompiles).
        if self._k_ratio is None:
            return self._k_value
        num, den = self._k_ratio
        return num / den

    def forward(
        self,
        x: Tensor,
        batch: Optional[Tensor] = None,
        *,
        pos: Optional[Tensor] = None,
        normal: Optional[Tensor] = None,
        return_indices: bool = False,
        return_weights: bool = False,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Runs the layer.

        Args:
            x (Tensor): Tokens :math:`(N, C)`.
            batch (Tensor, optional): Set index per token :math:`(N)`,
                sorted; :obj:`None` for one set. (default: :obj:`None`)
            pos (Tensor, optional): Positions for the relative bias.
            normal (Tensor, optional): Normals for the relative bias.
            return_indices (bool, optional): Also return the sampled token
                indices. (default: :obj:`False`)
            return_weights (bool, optional): With ``return_indices``, also
                return the attention weights :math:`(N, H, k_{\max})` of
                every query over its set's sampled keys, in the order of
                the indices (through the explicit path, which computes
                them); :math:`(N, H, k_{\max} + 1)` with ``summary=True``,
                the summary key's weight last. (default: :obj:`False`)
            num_graphs (int, optional): Number of sets :math:`B`, e.g. a
                PyG ``Batch.num_graphs``. With it the layer never waits
                for the GPU; without it the number is read back once per
                ``batch`` tensor, which :func:`torch.export.export` cannot
                record (a :class:`ValueError` naming it). (default:
                :obj:`None`)
            max_num_nodes (int, optional): Largest set size, if known:
                exact shapes (a reshape for equal-size sets) instead of
                bounds. (default: :obj:`None`)
        """
        self._check_shapes(x, batch, pos, normal)
        # Launched first, so that the GPU casts while the host decides the
        # path (the time of a call alone, at large sets).
        x_low = self._projection_input(x)
        if batch is not None and batch.dtype != torch.long:
            batch = batch.long()
        info = self._set_info(x, batch, pos, normal, num_graphs, max_num_nodes)
        N, H = x.size(0), self.heads
        hooks = self._hooked()
        if N == 0:  # no query: nothing to attend from
            out = self.lin_out(x)
            idx = torch.full((info.num_sets, H, 0), -1, device=x.device)
            if not return_indices:
                return out
            return (out, idx, x.new_zeros(0, H, 0)) if return_weights \
                else (out, idx)

        if not hooks and self._fused_inference(x, info, return_weights):
            return self._fused_forward(x, x_low, batch, info, return_indices)
        if not hooks and self._dense_keeps_all(info, N, return_indices):
            return self._dense_forward(x, x_low, batch, info)
        return self._sampled_forward(x, x_low, batch, info, pos, normal,
                                     return_indices, return_weights, hooks)

    def _hooked(self) -> bool:
        # Whether calling a submodule would run a hook (a global one, or
        # one of lin_q, lin_kv, lin_out, the scorer's or the relative
        # bias's layers: PyTorch's spectral_norm and prune set the weight
        # in a pre-hook). The fast paths read the weights directly, in
        # stacked GEMMs and fused kernels, and so would skip the hooks;
        # the general path then calls the layers as modules.
        return self._module_tree.hooked_in(self)

    def _projection_input(self, x: Tensor) -> Optional[Tensor]:
        # x in the dtype the projections compute in, where they would cast
        # float32 tokens to it (see _projection_dtype); None elsewhere.
        dtype = _projection_dtype(x, self.lin_q.weight)
        if dtype is None or x.dtype != torch.float32 \
                or dtype == torch.float32:
            return None
        return x.to(dtype)

    def _sampled_forward(self, x: Tensor, x_low: Optional[Tensor],
                         batch: Optional[Tensor],
                         info: SetInfo, pos: Optional[Tensor],
                         normal: Optional[Tensor], return_indices: bool,
                         return_weights: bool, modules: bool = False,
                         ) -> Union[Tensor, Tuple[Tensor, ...]]:
        # The method's steps on the general path: training, exported
        # graphs, relative bias, summary key, sets too large for the fused
        # kernels, and hooks on the submodules (modules=True: every layer
        # called as a module).
        N, C = x.shape
        H, D = self.heads, self.head_dim
        # 1. Queries for every token; keys and values for every candidate,
        # or, where the rows that step 2 reads are fewer than half the
        # tokens, for those rows alone (after step 2).
        if modules:
            q, kv, hidden, (scorer_args, out_lin, kv_lin) = \
                self._project_modules(x)
        else:
            q, kv, hidden, (scorer_args, out_lin, kv_lin) = self._project(
                x, x_low,
                self._projects_sampled_rows(info, N, return_indices))
        if q.requires_grad and not is_tracing():
            # Its own storage: the attention saves the queries, and a view
            # would keep the whole projection (keys, values, the scorer's
            # rows) alive until the backward.
            q = q.contiguous()
        q = q.view(N, H, D)  # [N, C] -> [N, H, D]
        summ = None
        if self.sampling == 'sft':  # 2. raw tokens sampled, then projected
            sel, u = self._sample_sft(x, hidden, batch, info, scorer_args)
        else:
            if kv is not None:  # [N, 2C] -> [N, H, 2D] as [k_h, v_h]
                kv = kv.view(N, H, 2 * D)
            if self.num_registers > 0:
                reg = self.reg_kv.to(kv.dtype).repeat(info.num_sets, 1, 1)
                kv = torch.cat([kv, reg], dim=0)  # [N + B * R, H, 2D]
            # 2. Sample k candidates per set and head (relaxed in training).
            relaxed = self._relaxes(info)
            if self._keeps_all(info, return_indices):  # nothing to rank
                sel = keep_all(info, N, self.num_registers, H, x.device)
                scores = None  # every candidate kept: no summary key
            else:
                rows = None
                if kv is None and relaxed:
                    # The relaxation, the scores' only reader, reads those
                    # of the top and bottom sets: the scorer's backward
                    # runs on their rows alone.
                    rows = ScoredRows(N)
                    scorer_args = dict(scorer_args, rows=rows)
                sel, scores = self._sample(x, hidden, batch, info,
                                           return_indices, scorer_args)
                if rows is not None:
                    rows.set(sel.ids, self.head_index, _slot_valid(sel))
            head = self.head_index  # [1, H, 1]
            # Equal sets: the top and bottom sets hold distinct ids.
            unique = info.all_valid
            hard = self.sampling == 'hard'
            if kv is None and relaxed:  # the top and bottom rows alone
                u = project_rows(sel.ids, *kv_lin)  # [B, H, k + m, 2D]
                u = relax_rows(sel, u, head, self.tau, hard,
                               unique=unique)  # [B, H, k, 2D]
            elif kv is None:  # the top rows alone
                u = project_rows(sel.top, *kv_lin)  # [B, H, k, 2D]
            elif relaxed:
                u = relax(sel, kv, head, self.tau, hard,
                          unique=unique)  # [B, H, k, 2D]
            else:
                u = gather_rows(kv, sel.top, head, unique)  # [B, H, k, 2D]
            if scores is not None:  # 2b. one score-pooled key per set
                summ = summarize(kv, *scores, batch, info)
                u = torch.cat([u, summ.rows], dim=2)  # [B, H, k + 1, 2D]

        # 3. Every query attends to its own set's sampled keys (keys and
        # values copied to the tiles together).
        tiles = make_tiles(info, batch, N, self._packed(info, N),
                           self._tile_size(info, N))
        key, value = per_tile(u, tiles).split(D, dim=-1)  # [nt, H, k, D]
        weights = [] if return_indices and return_weights else None
        o = self._attend(to_tiles(q, tiles), key, value, sel, tiles, pos,
                         normal, weights, summ, modules)
        out = from_tiles(o, tiles).reshape(N, C)  # [N, H, D] -> [N, C]
        out = self.lin_out(out) if modules else \
            linear_unchecked(out, *out_lin)
        if not return_indices:
            return out
        idx = self._indices(sel.top, info, N)
        if weights is None:
            return out, idx
        alpha = torch.cat(weights, dim=0)  # [nt, H, T, k]
        return out, idx, from_tiles(alpha, tiles)  # [N, H, k]

    def _relaxes(self, info: SetInfo) -> bool:
        # Whether the keys and values are relaxed at rank k (training with
        # a scorer, some set having a bottom set): the rows of the top and
        # bottom sets are read, not those of the top set alone.
        return self.training and self.scorer is not None and info.m_max > 0

    def _projects_sampled_rows(self, info: SetInfo, N: int,
                               return_indices: bool,
                               fused: bool = False) -> bool:
        # Whether the general path projects keys and values of the sampled
        # rows alone (project_rows), in evaluation and in training (the
        # rows of the top set, and of the bottom set where the relaxation
        # reads them): from SAMPLED_ROWS_MIN_TOKENS tokens in evaluation
        # and TRAINING_SAMPLED_ROWS_MIN_TOKENS in training, where those
        # rows of every set and head are at most half the tokens, without
        # registers or summary key (their keys come from every candidate)
        # or a set that keeps every candidate. The fused path (fused=True)
        # does from FUSED_SAMPLED_ROWS_MIN_TOKENS tokens in calls captured
        # as CUDA graphs; its compiled operator takes every token's keys
        # and values.
        least = FUSED_SAMPLED_ROWS_MIN_TOKENS if fused else \
            TRAINING_SAMPLED_ROWS_MIN_TOKENS if self.training else \
            SAMPLED_ROWS_MIN_TOKENS
        if N < least or (fused and (is_tracing() or not is_capturing())):
            return False
        rows = info.k_max + (info.m_max if self._relaxes(info) else 0)
        return (config.use_sampled_rows() and self.sampling != 'sft'
                and self.num_registers == 0 and not self.summary
                and 2 * info.num_sets * self.heads * rows <= N
                and not self._keeps_all(info, return_indices))

    def _fused_inference(self, x: Tensor, info: SetInfo,
                         return_weights: bool) -> bool:
        # Inference without noise, dot scores, softmax, no relative bias,
        # no summary key, sets of at most FUSED_MAX_SET_SIZE tokens that
        # the selection kernels serve (in one block, or in chunks whose
        # winners fit one block), on a device Triton serves, outside
        # exported graphs (compiled ones hold the kernels as one operator),
        # with no gradient to record.
        return (config.use_fused_inference() and not self.training
                and not self.stochastic_eval
                and self.sampling in ('hard', 'soft')
                and self.score == 'dot' and self.normalization == 'softmax'
                and self.rel_bias is None and not self.summary
                and not return_weights and info.max_size is not None
                and info.max_size <= FUSED_MAX_SET_SIZE
                and selection_chunks(info.max_size, self.num_registers,
                                     info.k_max) > 0
                and self.head_dim <= FUSED_MAX_HEAD_DIM
                and x.dtype in FUSED_DTYPES and triton_serves(x.device)
                and not is_exporting()
                and not (torch.is_grad_enabled()
                         and needs_grad(x, *self.parameters())))

    def _runs_fused(self, x: Tensor, batch: Optional[Tensor],
                    pos: Optional[Tensor], num_graphs: Optional[int],
                    max_num_nodes: Optional[int]) -> bool:
        # Whether forward(x, batch, pos=pos, num_graphs=...,
        # max_num_nodes=...) takes the fused inference path, for a caller
        # that replays the call as a CUDA graph; checks the arguments as
        # forward does. Reads nothing back when the sizes are given.
        self._check_shapes(x, batch, pos, None)
        if x.size(0) == 0 or (batch is not None and (
                batch.dtype != torch.long or num_graphs is None
                or max_num_nodes is None)):
            return False
        info = self._set_info(x, batch, pos, None, num_graphs, max_num_nodes)
        return not self._hooked() and self._fused_inference(x, info, False)

    def _fused_forward(self, x: Tensor, x_low: Optional[Tensor],
                       batch: Optional[Tensor], info: SetInfo,
                       return_indices: bool,
                       ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        # Projection, scorer, then selection and attention in two kernels,
        # three for chunked sets (see _fused_inference.py); [N, C] straight
        # into lin_out. From FUSED_SAMPLED_ROWS_MIN_TOKENS tokens, in a
        # CUDA graph's capture, the keys and values of the selected rows
        # alone are projected, between the selection and the attention.
        rows = self._projects_sampled_rows(info, x.size(0), return_indices,
                                           fused=True)
        q, kv, hidden, (scorer_args, out_lin, kv_lin) = self._project(
            x, x_low, rows)
        score = self.scorer(x, hidden, **scorer_args)  # [N, H] float32
        out, idx = fused_sampled_attention(
            q, kv, score, self.reg_score, self.reg_kv, batch, info,
            self._k(), kv_lin)
        out = F.linear(out, *out_lin)
        if not return_indices:
            return out
        return out, order_by_score(idx, score, self.reg_score)

    def _project(self, x: Tensor, x_low: Optional[Tensor] = None,
                 sampled_kv: bool = False,
                 ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor],
                            Tuple[Dict[str, Any], Tuple[Tensor, Tensor],
                                  Optional[Tuple[Tensor, Tensor, Tensor]]]]:
        # One GEMM for the queries, the keys and values and the scorer's
        # first layer (all read x): one launch and one cast of x instead
        # of three. The modules keep their own parameters. Also returns
        # the scorer's extra arguments (the weight and bias of its second
        # layer, cast with the stacked ones; the cast input, weight and
        # bias that computed its hidden rows) and the (weight, bias) of
        # lin_out. Under autocast the casts are made here rather than
        # inside F.linear, so that the scorer's training node can keep
        # them (x's cast is x_low where forward made it). SFT projects keys
        # and values of the sampled tokens only; so does sampled_kv, which
        # returns no keys and values but (x cast, weight, bias) of lin_kv:
        # in inference the stacked weight's last rows (the GEMM reads the
        # rows above), where gradients flow lin_kv's own weight and bias
        # (rows of the stacked ones would each add a backward that zeroes
        # and fills the whole stacked gradient).
        lins = self._projected()
        own_kv = sampled_kv and needs_grad(self.lin_kv.weight,
                                           self.lin_kv.bias)
        if own_kv:  # lin_kv comes last
            lins = lins[:-1]
        weight, bias, *rest = self._linear_weights(
            lins, x, [self.lin_kv] if own_kv else [])
        kv_lin = None
        if own_kv:
            *rest, kv_weight, kv_bias = rest
        dtype = _projection_dtype(x, weight)
        if dtype is not None:
            weight, bias = weight.to(dtype), bias.to(dtype)
        x = _in_dtype(x, x_low, weight.dtype)  # autocast's, if on
        sizes = [lin.out_features for lin in lins]
        if own_kv:
            kv_lin = (x, kv_weight.to(weight.dtype), kv_bias.to(weight.dtype))
        elif sampled_kv:  # lin_kv's rows come last
            rows = sizes.pop()
            kv_lin = (x, weight[-rows:], bias[-rows:])
            weight, bias = weight[:-rows], bias[:-rows]
        out = linear_unchecked(x, weight, bias).split_with_sizes(sizes, 1)
        # No submodule holds a hook (forward checked): the scorer need not
        # ask.
        scorer_args: Dict[str, Any] = {'hooked': False}
        if len(rest) > 2:
            scorer_args['lin2_weights'] = (rest[0], rest[1])
        out_lin = (rest[-2], rest[-1])
        hidden = out[1] if self._stacks_scorer() else None
        if hidden is not None and torch.is_grad_enabled() \
                and not is_tracing():  # for the scorer's training node
            start, rows = sizes[0], sizes[1]
            scorer_args['lin1_inputs'] = (x, weight[start:start + rows],
                                          bias[start:start + rows])
        kv = None if self.sampling == 'sft' or sampled_kv else out[-1]
        return out[0], kv, hidden, (scorer_args, out_lin, kv_lin)

    def _project_modules(self, x: Tensor,
                         ) -> Tuple[Tensor, Optional[Tensor], None,
                                    Tuple[Dict[str, Any], None, None]]:
        # _project's results where a submodule holds a hook: the layers
        # called as modules (their hooks run, a pre-hook's weight is the
        # one read), the scorer left to compute its own hidden layer.
        kv = None if self.sampling == 'sft' else self.lin_kv(x)  # [N, 2C]
        return self.lin_q(x), kv, None, ({'hooked': True}, None, None)

    def _stacks_scorer(self) -> bool:
        # The scorer's first layer reads x itself, unless the scorer
        # normalises x first.
        return self.scorer is not None and not self.scorer_norm

    def _projected(self) -> List[Linear]:
        # The layers stacked into the projection GEMM, lin_kv last (a
        # projection of the sampled rows alone leaves its rows out).
        lins = [self.lin_q]
        if self._stacks_scorer():
            lins.append(self.scorer.score_nn[0])
        if self.sampling != 'sft':
            lins.append(self.lin_kv)
        return lins

    def _linear_weights(self, lins: List[Linear], x: Tensor,
                        own: Sequence[Linear] = ()) -> List[Tensor]:
        # The stacked weight [kC, C] and bias [kC], then the weight and
        # bias of the scorer's second layer (where there is a scorer), of
        # lin_out and of every layer of own, in the dtype the call
        # computes in (autocast's, if on): one concatenation and one cast
        # for all of them (see
        # stacked_cast), one node in the graph. Where no gradient reaches
        # them (inference) they are kept between calls: no concatenation
        # and no cast per call. The cache is rebuilt when a parameter is
        # changed in place (its version counter), replaced or moved, and
        # dropped by train() / eval(). Traced graphs (compile, export),
        # and training with config.use_stacked_casts() off, concatenate
        # and leave the casts to autocast (and the compiler).
        groups = [[lin.weight for lin in lins], [lin.bias for lin in lins]]
        if self._stacks_scorer():
            lin2 = self.scorer.score_nn[2]
            groups += [[lin2.weight], [lin2.bias]]
        groups += [[self.lin_out.weight], [self.lin_out.bias]]
        for lin in own:
            groups += [[lin.weight], [lin.bias]]
        params = [t for group in groups for t in group]
        if is_tracing() or (needs_grad(*params)
                            and not config.use_stacked_casts()):
            return [torch.cat(group, 0) if len(group) > 1 else group[0]
                    for group in groups]
        dtype = params[0].dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        if needs_grad(*params):
            return stacked_cast(groups, dtype)
        self._projection_cache, weights = cached_stacked_cast(
            self._projection_cache, groups, dtype)
        return weights

    def train(self, mode: bool = True) -> 'SamsaAttention':
        self._projection_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .half(), ...: new storage for the weights, which may take
        # the old one's address and version (.half().float()).
        self._projection_cache = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> Dict[str, Any]:
        # Copies and pickles hold no kept weights (see SamsaConv's).
        return dict(super().__getstate__(), _projection_cache=None)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        trace_hooks_of(self)

    def _sample_sft(self, x: Tensor, hidden: Tensor, batch: Optional[Tensor],
                    info: SetInfo, scorer_args: Dict[str, Any],
                    ) -> Tuple[Selection, Tensor]:
        # One shared score per token; k raw tokens per set (mixed in
        # training); keys and values projected from them alone.
        H, D = self.heads, self.head_dim
        importance = self.scorer(x, hidden, **scorer_args).view(-1)
        importance = importance.to(at_least_float32(importance.dtype))
        sample = sft_sample(
            x, importance, batch, self._k(), mix=self.training,
            perturb=self.training or self.stochastic_eval,
            num_sets=info.num_sets, max_size=info.max_size)
        B, K = sample.index.shape
        kv = self.lin_kv(sample.x).view(B, K, H, 2 * D)  # [B, k, H, 2D]
        u = kv.transpose(1, 2)  # [B, H, k, 2D]
        # An empty set keeps one (unused) valid slot, as in select().
        valid = sample.index >= 0  # [B, k]
        valid[:, 0] = True
        top = sample.index.clamp(min=0).unsqueeze(1).expand(B, H, K)
        return Selection(top, K, valid), u

    def _sample(self, x: Tensor, hidden: Optional[Tensor],
                batch: Optional[Tensor], info: SetInfo, ordered: bool,
                scorer_args: Optional[Dict[str, Any]] = None,
                ) -> Tuple[Selection, Optional[tuple]]:
        # Returns the selection and, where the summary key is on, the
        # clean token and register scores it pools with.
        N, R = x.size(0), self.num_registers
        scores = None
        if self.scorer is None:  # 'full': every candidate, in token order
            order = -torch.arange(N + R, device=x.device, dtype=torch.float)
            importance = order[:N, None].expand(N, self.heads)
            reg_importance = None if R == 0 else \
                order[N:, None].expand(R, self.heads)
        else:
            # [N, H] float32 (float64 in a float64 layer)
            importance = self.scorer(x, hidden, **(scorer_args or {}))
            dtype = at_least_float32(importance.dtype)
            importance = importance.to(dtype)
            reg_importance = None if R == 0 else self.reg_score.to(dtype)
            if self._summary_on(info):
                scores = (importance, reg_importance)
        perturb = self.scorer is not None and (self.training
                                               or self.stochastic_eval)
        # Rank by sorting where a padded score matrix would be large or
        # n_max is unknown; one set (batch=None) always uses top-k.
        sel = select(importance, reg_importance, batch, info, R, perturb,
                     with_bottom=self.training and self.scorer is not None,
                     packed=batch is not None
                     and self._padding_costly(info, x.size(0)),
                     ordered=ordered, head=self.head_index)
        return sel, scores

    def _summary_on(self, info: SetInfo) -> bool:
        # Where every set keeps all its candidates (k >= n + R) the
        # attention is exact full attention: no summary key.
        return self.summary and not (
            info.max_size is not None
            and info.k_max >= info.max_size + self.num_registers)

    def _attend(self, q: Tensor, key: Tensor, value: Tensor, sel: Selection,
                tiles: Tiles, pos: Optional[Tensor],
                normal: Optional[Tensor],
                weights: Optional[list] = None,
                summ: Optional[Summary] = None,
                modules: bool = False) -> Tensor:
        # q: [nt, H, T, D]; key, value: [nt, H, k, D] -> [nt, H, T, D];
        # a 'weights' list gets the weights, from the explicit path. With
        # the summary, the last of the k slots is the summary key.
        key_valid = None  # [nt, k] where some sets have fewer keys
        key_bias = None  # [nt, k + 1] with the summary: 0, log c or -inf
        if summ is not None:
            B, K = sel.top.size(0), sel.top.size(-1)
            top_bias = summ.log_count.new_zeros(B, K)  # [B, k]
            if sel.top_valid is not None:
                top_bias = top_bias.masked_fill(~sel.top_valid, float('-inf'))
            key_bias = per_tile(torch.cat([top_bias, summ.log_count], 1),
                                tiles)
        elif sel.top_valid is not None:
            key_valid = per_tile(sel.top_valid, tiles)
        dropout = self.dropout if self.training else 0.0
        if (self.score == 'dot' and self.normalization == 'softmax'
                and self.rel_bias is None and weights is None):
            return sdpa_attention(q, key, value, key_valid, dropout,
                                  self.training, key_bias)
        # The fused relative-bias kernels take no per-key offset.
        # (The fused bias kernel reads the relative bias's weights: not
        # where a hook is set, modules=True.)
        if weights is None and summ is None and not modules \
                and self._fused_bias(q, dropout):
            geo = self._pair_geometry(pos, normal, sel.top, tiles)
            return biased_attention(q, key, value, key_valid, geo,
                                    self._bias_weights())
        leak = None
        if self.normalization == 'leaky':
            H, D = self.heads, self.head_dim
            leak = (key * self.leak_weight.view(1, H, 1, D).to(
                key.dtype)).sum(-1) + self.leak_bias.view(1, H, 1)
        bias_fn = None
        if self.rel_bias is not None:
            geo = self._pair_geometry(pos, normal, sel.top, tiles, summ)
            bias_fn = self._bias_fn(geo)
        return explicit_attention(q, key, value, key_valid,
                                  SIMILARITIES[self.score],
                                  self.normalization, leak, bias_fn,
                                  dropout, self.training, weights=weights,
                                  key_bias=key_bias)

    def _fused_bias(self, q: Tensor, dropout: float) -> bool:
        # Dot-product softmax with the relative bias and no attention
        # dropout: one fused kernel where Triton serves the device.
        # Export and tracing (ONNX) take the explicit path: the kernel is
        # compiled on its own, outside any exported graph; so does a
        # float64 layer (the kernels' bias runs in float32).
        return (config.use_fused_bias() and self.rel_bias is not None
                and self.score == 'dot' and self.normalization == 'softmax'
                and dropout == 0.0 and not is_exporting()
                and q.dtype != torch.float64
                and flex_supported(q.device))

    def _keeps_all(self, info: SetInfo, return_indices: bool) -> bool:
        # Every set keeps all its candidates (n_max + R <= k, known on the
        # host): the scores would change neither the key sets nor, with
        # no bottom set, any gradient. Indices asked for keep score order.
        if info.max_size is None or info.m_max > 0 \
                or info.k_max != info.max_size + self.num_registers:
            return False
        if self.scorer is None:
            return True
        return isinstance(self.k, int) and not return_indices

    def _dense_keeps_all(self, info: SetInfo, N: int,
                         return_indices: bool) -> bool:
        # Sets that keep all their tokens, attended in the padded layout
        # (one tile per set) with dot-product softmax: the exact attention
        # of _dense.py, with no key ids and no gather.
        return (not return_indices and self.num_registers == 0
                and self.sampling in ('hard', 'soft', 'full')
                and self.score == 'dot' and self.normalization == 'softmax'
                and self.rel_bias is None and self._keeps_all(info, False)
                and not (self._packed(info, N)
                         and self._tile_size(info, N) < info.max_size))

    def _dense_forward(self, x: Tensor, x_low: Optional[Tensor],
                       batch: Optional[Tensor], info: SetInfo) -> Tensor:
        # Queries, keys and values of the tokens in one GEMM, every set's
        # attention over its own tokens (padded to [B, n_max] slots at
        # once, or on the packed rows), projected out.
        B, n = info.num_sets, info.max_size
        layout = None if info.equal else dense_layout(batch, B, n)
        weight, bias, *rest = self._linear_weights([self.lin_q, self.lin_kv],
                                                   x)
        # The weights' dtype: cached casts of autocast's dtype, if on.
        x = _in_dtype(x, x_low, weight.dtype)
        qkv = linear_unchecked(x, weight, bias)  # [N, 3C]
        o = sets_attention(qkv, layout, B, n, self.heads,
                           self.dropout if self.training else 0.0)
        return linear_unchecked(o, rest[-2], rest[-1])  # lin_out

    def _padding_costly(self, info: SetInfo, N: int) -> bool:
        if info.max_size is None:  # unknown n_max: only tiles are safe
            return True
        if self.padded is not None:
            return not self.padded
        # Pad only when it costs at most a quarter more queries.
        return info.num_sets * info.max_size > 1.25 * N + self.tile_size

    def _packed(self, info: SetInfo, N: int) -> bool:
        # Also cut large sets into query tiles: the attention backward
        # parallelises over key blocks, of which k keys give only a few.
        return self._padding_costly(info, N) or (
            self.padded is None and info.max_size > 8 * self.tile_size)

    def _tile_size(self, info: SetInfo, N: int) -> int:
        if info.max_size is None:
            # Sizes unknown: tiles of about the mean set size (a multiple
            # of 16, at most tile_size), so the bound on the number of
            # tiles pads small sets by at most about one mean set each.
            mean = -(-N // max(info.num_sets, 1))
            return min(self.tile_size, max(16, -(-mean // 16) * 16))
        # Beyond 128 tiles per set, larger tiles: fewer key copies.
        T = max(self.tile_size, -(-info.max_size // 128))
        return -(-T // 64) * 64 if T > self.tile_size else T

    def _pair_geometry(self, pos: Tensor, normal: Optional[Tensor],
                       top: Tensor, tiles: Tiles,
                       summ: Optional[Summary] = None) -> PairGeometry:
        N = pos.size(0)
        # float32, float64 in a float64 layer
        dtype = at_least_float32(self.lin_q.weight.dtype)
        pos = pos.to(dtype)
        normal = None if normal is None else normal.to(dtype)
        R = self.num_registers
        if R > 0:  # registers sit at the origin with no normal
            pad = pos.new_zeros(top.size(0) * R, pos.size(1))
            pos = torch.cat([pos, pad], dim=0)
            if normal is not None:
                normal = torch.cat([normal, pad], dim=0)
        P = pos.size(1)

        def keys(t: Tensor) -> Tensor:
            # [B, H, k, P]; the summary key sits at the candidates'
            # score-weighted mean (weights detached: geometry).
            t_k = t[top]
            if summ is None:
                return t_k
            return torch.cat([t_k, summ.pool(t).unsqueeze(2)], 2)

        # Keys: [B, H, k, P] -> [nt, H, k, P]; queries: [N, 1, P] ->
        # [nt, 1, T, P] -> [nt, T, P], shared by the heads.
        geo = PairGeometry(
            pos_q=to_tiles(pos[:N].view(N, 1, P), tiles)[:, 0],
            pos_k=per_tile(keys(pos), tiles))
        if normal is not None:
            geo.normal_k = per_tile(keys(normal), tiles)
            geo.normal_q = to_tiles(normal[:N].view(N, 1, P), tiles)[:, 0]
        return geo

    def _bias_weights(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        rb = self.rel_bias
        return (rb.lin_scale.weight, rb.lin_scale.bias, rb.lin_bias.weight,
                rb.lin_bias.bias)

    def _bias_fn(self, geo: PairGeometry):
        rel_bias = self.rel_bias

        def apply(score: Tensor, s: int, e: int) -> Tensor:
            # |p_i - p_j|^2 = |p_i|^2 + |p_j|^2 - 2 p_i.p_j, as a matmul.
            g = geo.slice(s, e)
            pq, pk = g.pos_q.unsqueeze(1), g.pos_k
            dist = (pq.square().sum(-1, keepdim=True)
                    + pk.square().sum(-1).unsqueeze(-2)
                    - 2.0 * pq @ pk.transpose(-1, -2)).clamp_(min=0.0)
            ndot = None  # without normals the feature is zero
            if g.normal_k is not None:  # [c, H, T, k]
                ndot = g.normal_q.unsqueeze(1) @ g.normal_k.transpose(-1, -2)
            return rel_bias(score.to(at_least_float32(score.dtype)),
                            (dist, ndot))

        return apply

    def _indices(self, top: Tensor, info: SetInfo, N: int) -> Tensor:
        R = max(self.num_registers, 1)
        idx = torch.where(top < N, top, -2 - (top - N) % R)
        if info.all_valid:
            return idx
        j = torch.arange(top.size(-1), device=top.device)
        valid = j.view(1, 1, -1) < info.k.view(-1, 1, 1)  # [B, 1, k]
        return idx.masked_fill(~valid, -1)

    def __repr__(self) -> str:
        extra = ''
        if self.num_registers:
            extra += f', num_registers={self.num_registers}'
        if self.score != 'dot':
            extra += f', score={self.score!r}'
        if self.normalization != 'softmax':
            extra += f', normalization={self.normalization!r}'
        if self.rel_bias is not None:
            extra += ', relative_bias=True'
        if self.summary:
            extra += ', summary=True'
        if self.scorer_norm:
            extra += ', scorer_norm=True'
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads}, k={self.k}, '
                f'sampling={self.sampling!r}{extra})')


def _check_k(k: Any) -> Union[int, float]:
    # A positive int (a NumPy one too, returned as an int), or a fraction
    # in (0, 1] of each set's size; returns it.
    if isinstance(k, bool) or not isinstance(k, (Integral, float)):
        raise TypeError(f"Expected 'k' to be an int or a float "
                        f"(got {type(k).__name__})")
    if isinstance(k, Integral):
        if k <= 0:
            raise ValueError(f"Expected 'k' to be a positive int (got {k})")
        return int(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"Expected 'k' as a float to be a fraction in "
                         f"(0, 1] (got {k})")
    return k


def _refresh_tau(module: SamsaAttention, incompatible_keys) -> None:
    module.tau = float(module.temperature)


def _slot_valid(sel: Selection) -> Optional[Tensor]:
    r"""Whether each slot of ``sel.ids`` (top set, then bottom set) holds
    a candidate of its own, :math:`(B, 1, k + m)`; :obj:`None` where every
    slot does."""
    if sel.top_valid is None and sel.bottom_valid is None:
        return None
    B, K = sel.ids.size(0), sel.ids.size(-1)
    top, bottom = sel.top_valid, sel.bottom_valid
    if top is None:
        top = bottom.new_ones(B, sel.k)
    if bottom is None:
        bottom = top.new_ones(B, K - sel.k)
    return torch.cat([top, bottom], dim=1).unsqueeze(1)  # [B, 1, k + m]


def _projection_dtype(x: Tensor, weight: Tensor) -> Optional[torch.dtype]:
    r"""The dtype that autocast would cast :obj:`x` and the float32
    :obj:`weight` of a projection to, where the layer makes those casts
    itself (autocast on for :obj:`x`'s device, outside traced graphs,
    where the compiler places the casts; not for float64 tokens);
    :obj:`None` elsewhere."""
    device = x.device.type
    if (not torch.is_autocast_enabled(device) or is_tracing()
            or weight.dtype != torch.float32 or x.dtype == torch.float64):
        return None
    return torch.get_autocast_dtype(device)


def _in_dtype(x: Tensor, x_low: Optional[Tensor],
              dtype: torch.dtype) -> Tensor:
    r""":obj:`x` in :obj:`dtype`: :obj:`x_low`, the cast that forward
    made first thing (see :meth:`SamsaAttention._projection_input`), where
    it is of that dtype."""
    if x.dtype == dtype:
        return x
    if x_low is not None and x_low.dtype == dtype:
        return x_low
    return x.to(dtype)
