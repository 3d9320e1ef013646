"""One decoder layer, fewer launches: the padding-free training forward of a Llama-style layer, hand-fused.

Profiled on an H100 (8B QLoRA, 4-8k tokens a step), the padding-free path left the GPU idle about half of each
step: the step was bound by the CPU issuing ~8,500 kernels through ~30 autograd nodes per layer (PEFT's LoRA
wrappers, bitsandbytes' Python matmul with its double-quantized scales dequantized anew on every call, separate
residual adds). Here each group of linear layers that reads the same input (q/k/v; gate/up; o; down) is one
autograd function with its own backward:

- the 4-bit base weights are dequantized by one bitsandbytes kernel each, their block scales (double
  quantization) dequantized once and kept (1/16 byte per weight);
- the LoRA matrices are cast to the compute dtype once per optimizer step (keyed on their version counter), the
  scaling folded into B; the group's A matrices are one matrix product;
- the residual is added by the output projections' GEMM itself (``addmm``), not by a separate kernel.

Only the call the fast path makes uses it: a packed row (``orchard_seq_lens`` from
:mod:`orchard.align.fast.unpad`), no KV cache, adapters in their plain form, LoRA dropout included (each adapter's
mask drawn from a seed, drawn again in the backward). Anything else (generation, DoRA, merged or several
adapters, trainable biases, attention dropout) runs the layer's own forward. Same math as the plain path:
``tests/test_fast_path.py`` checks loss and every LoRA gradient on CPU. The MLP's tail (:class:`_MLPTail`)
recomputes the SwiGLU product in its backward, and a checkpointed layer's recomputation skips the down
projection whose output it discards.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .attention import SEQ_LENS_KEY, packed_attention
from .decoder import backbone, is_kept, keep, unkeep
from .lora import adapter_and_dropout

SUPPORTED = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
_CLASSES: dict[type, type] = {}


# -- weights ------------------------------------------------------------------------------------------------


def _base(linear):
    return linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear


def _dequantized(base, dtype, direct: bool = True) -> torch.Tensor:
    """The base layer's weight, (out, in), in ``dtype``: bitsandbytes 4-bit weights dequantized by one kernel
    (``direct``: bitsandbytes' C entry point where it checked out, see :class:`_DirectDequant`)."""
    w = base.weight
    q = base.__dict__.get("_orchard_q")
    if q is None or q[0] is not w:
        q = base.__dict__["_orchard_q"] = _quantized_view(w)
    if q[1] is None:  # a plain floating-point weight
        return w if w.dtype == dtype else w.to(dtype)
    _, data, absmax, blocksize, quant_type, shape, qdtype = q
    out = torch.empty(shape, dtype=qdtype, device=data.device)
    _dequantize_into(data, absmax, blocksize, quant_type, shape, qdtype, out, direct)
    return out if out.dtype == dtype else out.to(dtype)


def _quantized_view(w):
    """What dequantizing ``w`` needs, taken once: the packed bytes as a plain tensor (a ``Params4bit`` routes every
    torch call through Python), the block scales in fp32 (double quantization: dequantized here, once), the
    layout. ``(w, None, ...)`` for a plain weight."""
    qs = getattr(w, "quant_state", None)
    if qs is None:
        return (w, None, None, None, None, None, None)
    import bitsandbytes.functional as bnbf

    with torch.no_grad():
        if qs.nested:
            absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2)
            absmax += qs.offset
        else:
            absmax = qs.absmax
        absmax = absmax.float().contiguous()
    data = w.data
    if type(data) is not torch.Tensor:
        data = data.as_subclass(torch.Tensor)
    return (w, data.contiguous(), absmax, qs.blocksize, qs.quant_type, tuple(qs.shape), qs.dtype)


class _DirectDequant:
    """bitsandbytes' C dequantization entry point, checked once per process against its torch op (a cache of that
    check, not a switch: whether to use it at all is ``FastConfig.direct_dequant``, passed to :func:`enable`)."""

    fn = None  # None: not checked yet; False: the check failed or the entry point is missing; else the callable

    @classmethod
    def get(cls, data, absmax, blocksize, quant_type, shape, dtype):
        if cls.fn is None:
            cls.fn = _direct_dequant(data, absmax, blocksize, quant_type, shape, dtype)
        return cls.fn


def direct_dequant_in_use() -> bool:
    """Whether bitsandbytes' C entry point passed its byte-for-byte check in this process (GPU tests read it)."""
    return bool(_DirectDequant.fn)


def _dequantize_into(data, absmax, blocksize, quant_type, shape, dtype, out, direct: bool = True) -> None:
    # bitsandbytes' torch op runs a Python implementation (checks, device guard, ctypes); ~600 calls a step on an
    # 8B model. Its C function is called directly once the first call has shown both give the same bytes.
    if not data.is_cuda:  # bitsandbytes registers the out= form for CUDA only (CPU QLoRA: the tests, small runs)
        out.copy_(torch.ops.bitsandbytes.dequantize_4bit(data, absmax, blocksize, quant_type, shape, dtype))
        return
    fn = _DirectDequant.get(data, absmax, blocksize, quant_type, shape, dtype) if direct else False
    if fn:
        fn(data, absmax, blocksize, quant_type, dtype, out)
    else:
        torch.ops.bitsandbytes.dequantize_4bit.out(data, absmax, blocksize, quant_type, shape, dtype, out=out)


def _direct_dequant(data, absmax, blocksize, quant_type, shape, dtype):
    if not data.is_cuda:
        return False
    try:
        from bitsandbytes.cextension import lib

        names = {(torch.bfloat16, "nf4"): "cdequantize_blockwise_bf16_nf4",
                 (torch.bfloat16, "fp4"): "cdequantize_blockwise_bf16_fp4",
                 (torch.float16, "nf4"): "cdequantize_blockwise_fp16_nf4",
                 (torch.float16, "fp4"): "cdequantize_blockwise_fp16_fp4",
                 (torch.float32, "nf4"): "cdequantize_blockwise_fp32_nf4",
                 (torch.float32, "fp4"): "cdequantize_blockwise_fp32_fp4"}
        fns = {k: getattr(lib, v) for k, v in names.items()}
    except (ImportError, AttributeError, RuntimeError):
        return False
    raw_stream = torch._C._cuda_getCurrentRawStream

    def direct(data, absmax, blocksize, quant_type, dtype, out):
        if data.device.index != torch.cuda.current_device():
            torch.ops.bitsandbytes.dequantize_4bit.out(data, absmax, blocksize, quant_type, out.shape, dtype, out=out)
            return
        fns[(dtype, quant_type)](None, data.data_ptr(), absmax.data_ptr(), out.data_ptr(), blocksize, out.numel(),
                                 raw_stream(data.device.index))

    try:
        want = torch.empty(shape, dtype=dtype, device=data.device)
        torch.ops.bitsandbytes.dequantize_4bit.out(data, absmax, blocksize, quant_type, shape, dtype, out=want)
        got = torch.empty_like(want)
        direct(data, absmax, blocksize, quant_type, dtype, got)
        same = bool(torch.equal(got, want))
    except Exception:  # noqa: BLE001 - any mismatch in the C interface: keep the torch op
        return False
    return direct if same else False


def _lora_of(linear):
    """(A, B, scaling) of the one active adapter; None for a layer without adapters or with them disabled;
    False when the layer is in a form this path does not cover."""
    if not hasattr(linear, "lora_A"):
        return None if not any(p.requires_grad for p in linear.parameters()) else False
    return adapter_and_dropout(linear)


class _OptimizerSteps:
    """Optimizer steps taken in this process (any torch optimizer), part of every cached cast's stamp: an update
    through ``.data`` or a C kernel (8-bit optimizers) changes a weight without bumping its version counter.

    Counting needs torch's process-wide post-step hook. It is installed when the first module caches a cast and
    removed when the last such module is disabled (:func:`disable`) or freed, so importing this module, or a run
    on the plain path, leaves torch's optimizers untouched."""

    def __init__(self):
        self.count = 0
        self._holders: weakref.WeakSet = weakref.WeakSet()
        self._handle = None

    def _bump(self, optimizer, args, kwargs) -> None:
        self.count += 1

    def hold(self, module) -> None:
        if module in self._holders:
            return
        self._holders.add(module)
        weakref.finalize(module, self._drop_if_unused)
        if self._handle is None:
            self._handle = register_optimizer_step_post_hook(self._bump)

    def release(self, module) -> None:
        self._holders.discard(module)
        self._drop_if_unused()

    def _drop_if_unused(self) -> None:
        if self._handle is not None and not any(True for _ in self._holders):
            self._handle.remove()
            self._handle = None

    @property
    def installed(self) -> bool:
        return self._handle is not None


_STEPS = _OptimizerSteps()
_CAST_PREFIX = "_orchard_ab_"


def _cast_cached(owner, key: str, make, *params) -> torch.Tensor:
    """``make()`` computed once per state of the adapter weights: their storage, their version counters (in-place
    updates bump them) and the optimizer steps taken (fused optimizers, ``.data`` writes)."""
    _STEPS.hold(owner)
    stamp = (_STEPS.count, *((p.data_ptr(), p._version) for p in params))
    hit = owner.__dict__.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.no_grad():
        value = make()
    owner.__dict__[key] = (stamp, value)
    return value


def _drop_casts(owner) -> None:
    """Forget ``owner``'s cached casts (and stop counting steps for it)."""
    for k in [k for k in owner.__dict__ if k.startswith(_CAST_PREFIX)]:
        del owner.__dict__[k]
    _STEPS.release(owner)


class _Group:
    """Linear layers reading the same input: their frozen bases and (optionally) their LoRA adapters.
    ``direct``: 4-bit weights dequantized through bitsandbytes' C entry point (``FastConfig.direct_dequant``)."""

    def __init__(self, owner, linears, direct: bool = True):
        self.owner, self.linears, self.direct = owner, linears, direct
        self.bases = [_base(m) for m in linears]
        self.outs = [b.out_features for b in self.bases]

    def state(self):
        """Per call: the adapters as they are now, or False when this path does not apply."""
        loras = [_lora_of(m) for m in self.linears]
        if any(x is False for x in loras):
            return False
        if any(b.bias is not None and b.bias.requires_grad for b in self.bases):
            return False
        active = [x for x in loras if x is not None]
        if active and len(active) != len(loras):
            return False  # adapters on some members only: not a layout PEFT produces
        return loras if active else None

    def weights(self, dtype):
        return [_dequantized(b, dtype, self.direct) for b in self.bases]

    def biases(self, dtype):
        return [None if b.bias is None else b.bias.to(dtype) for b in self.bases]

    def adapters(self, loras, dtype):
        """A of all members stacked (r_total, in) with each member's scaling folded in, and each member's B.
        With the scaling in A, the saved product x A^T is already scaled: B's gradient needs no extra pass."""
        a_params = [x[0] for x in loras]
        b_params = [x[1] for x in loras]
        # one entry per adapter: DPO with a reference adapter alternates between two every step
        key = f"{_CAST_PREFIX}{id(self)}_{dtype}_{id(a_params[0])}"

        def make():
            a = [(p * x[2]).to(dtype) if x[2] != 1 else p.to(dtype) for p, x in zip(a_params, loras)]
            return (torch.cat(a) if len(a) > 1 else a[0]), [p.to(dtype) for p in b_params]

        return _cast_cached(self.owner, key, make, *a_params, *b_params)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _GroupLinear(torch.autograd.Function):
    """y_i = x W_i^T (+ bias_i) + (x (s_i A_i)^T) B_i^T (+ residual, single-member groups), one node per group.

    Saves the input and the small (tokens, r) LoRA products; the frozen weights are dequantized again in the
    backward (as bitsandbytes does), never stored."""

    @staticmethod
    def forward(ctx, x, group, loras, residual, *params):
        outs, x2, xa, cd, seeds = _group_forward(x, group, loras, residual)
        ctx.group, ctx.loras, ctx.cd, ctx.x_dtype, ctx.seeds = group, loras, cd, x.dtype, seeds
        ctx.x_shape, ctx.has_residual = x.shape, residual is not None
        ctx.save_for_backward(x2, xa)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        x2, xa = ctx.saved_tensors
        gx, g_params = _group_backward(ctx.group, ctx.loras, ctx.cd, x2, xa, grads, ctx.needs_input_grad[0],
                                       ctx.seeds)
        g_res = grads[0] if ctx.has_residual else None
        if gx is not None:
            gx = gx.view(ctx.x_shape)
            if gx.dtype != ctx.x_dtype:
                gx = gx.to(ctx.x_dtype)
        return (gx, None, None, g_res, *g_params)


def _group_backward(group: _Group, loras, cd, x2, xa, grads, need_gx: bool, seeds=None):
    """Input gradient (tokens, in) or None, and the LoRA gradients (A of each member, then B of each member)."""
    gys = []
    for g, n in zip(grads, group.outs):
        if g is None:
            g = torch.zeros(x2.shape[0], n, dtype=cd, device=x2.device)
        g = g.reshape(-1, g.shape[-1])
        gys.append(g if g.dtype == cd else g.to(cd))
    ws = group.weights(cd)
    gx = None
    if need_gx:
        gx = gys[0] @ ws[0]
        for g, w in zip(gys[1:], ws[1:]):
            gx.addmm_(g, w)
    del ws
    g_params = []
    if loras is not None:
        a, bs = group.adapters(loras, cd)
        gxa = [g @ b for g, b in zip(gys, bs)]
        gxa = torch.cat(gxa, dim=1) if len(gxa) > 1 else gxa[0]
        scales = [x[2] for x in loras]
        one_scale = len(set(scales)) == 1
        if seeds is None:
            if gx is not None:
                gx.addmm_(gxa, a)
            g_a = gxa.t() @ x2  # d/dA of s*A: scaled below
            if one_scale and scales[0] != 1:
                g_a.mul_(scales[0])
        r0, ga_list, gb_list = 0, [], []
        for i, (g, b, s) in enumerate(zip(gys, bs, scales)):
            r = b.shape[1]
            if seeds is None:
                ga = g_a[r0:r0 + r]
                ga_list.append(ga if one_scale else ga.mul(s))
            else:  # each member's dropped input again, from its seed
                gxa_i, a_i, p = gxa[:, r0:r0 + r], a[r0:r0 + r], loras[i][3]
                if seeds[i] is None:
                    xi = x2
                    if gx is not None:
                        gx.addmm_(gxa_i, a_i)
                else:
                    m = _mask(seeds[i], x2.shape, p, x2.device, x2.dtype)
                    xi = torch.mul(x2, m).mul_(1.0 / (1.0 - p))
                    if gx is not None:
                        t = gxa_i @ a_i
                        gx.add_(t.mul_(m), alpha=1.0 / (1.0 - p))
                    del m
                ga = gxa_i.t() @ xi
                ga_list.append(ga.mul_(s) if s != 1 else ga)
            gb_list.append(g.t() @ xa[:, r0:r0 + r])
            r0 += r
        g_params = ga_list + gb_list
    return gx, g_params


def _group_forward(x, group: _Group, loras, residual, outputs: bool = True):
    """The group's outputs (views shaped like ``x``), with what the backward keeps: the input, x A^T, and the
    seeds of the LoRA dropout masks (None without dropout). ``outputs=False``: what the backward keeps only, the
    outputs left uncomputed (a recomputation that discards them)."""
    cd = _compute_dtype(x)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != cd:
        x2 = x2.to(cd)
    xa, bs, seeds = None, [None] * len(group.bases), None
    if loras is not None:
        a, bs = group.adapters(loras, cd)
        xa, seeds = _lora_input(x2, a, bs, loras)
    lead = x.shape[:-1]
    if not outputs:
        dtype = residual.dtype if residual is not None else cd
        return tuple(torch.empty(*lead, n, dtype=dtype, device=x.device) for n in group.outs), x2, xa, cd, seeds
    ws = group.weights(cd)
    bias = group.biases(cd)
    r2 = residual.reshape(-1, residual.shape[-1]) if residual is not None and residual.dtype == cd else None
    outs, r0 = [], 0
    for w, b, lb in zip(ws, bias, bs):
        # the cheap terms first (LoRA update, residual, bias), then the base GEMM adds onto them in place: its
        # epilogue reads them while it computes, instead of a separate pass over the output afterwards
        add = r2 if b is None else (b if r2 is None else r2 + b)
        if lb is not None:
            r = lb.shape[1]
            xa_i = xa[:, r0:r0 + r]
            y = xa_i @ lb.t() if add is None else torch.addmm(add, xa_i, lb.t())
            r0 += r
        else:
            outs.append(x2 @ w.t() if add is None else torch.addmm(add, x2, w.t()))
            continue
        y.addmm_(x2, w.t())
        outs.append(y)
    if residual is not None and residual.dtype != cd:
        outs = [residual.reshape(-1, residual.shape[-1]) + outs[0].to(residual.dtype)]
    return tuple(y.view(*lead, y.shape[-1]) for y in outs), x2, xa, cd, seeds


# -- LoRA dropout ---------------------------------------------------------------------------------------------
# PEFT drops each adapter's input with its own mask. Here each member's mask is drawn from a seed (taken from
# torch's CPU generator, so torch.manual_seed reproduces a run and activation checkpointing, which restores the
# RNG state for its recomputation, draws the same ones) and drawn again from it in the backward: no mask is kept.

_GENERATORS: dict = {}


def _seed() -> int:
    return int(torch.randint(0, 2**62, (1,)).item())  # a CPU tensor: no device synchronisation


def _mask(seed: int, shape, p: float, device, dtype) -> torch.Tensor:
    """0/1 keep-mask with P(1) = 1 - p, the same for the same seed."""
    gen = _GENERATORS.get(device)
    if gen is None:
        gen = _GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.empty(shape, device=device, dtype=dtype).bernoulli_(1.0 - p, generator=gen)


def _lora_input(x2, a, bs, loras):
    """x A^T for the group's stacked (scaled) A; with dropout, each member's own dropped input. Returns it and the
    members' seeds (None when no member drops)."""
    if not any(x[3] > 0 for x in loras):
        return x2 @ a.t(), None
    seeds, parts, r0 = [], [], 0
    for lo, b in zip(loras, bs):
        r = b.shape[1]
        a_i = a[r0:r0 + r]
        r0 += r
        if lo[3] > 0:
            sd = _seed()
            xd = torch.mul(x2, _mask(sd, x2.shape, lo[3], x2.device, x2.dtype)).mul_(1.0 / (1.0 - lo[3]))
            parts.append(xd @ a_i.t())
        else:
            sd = None
            parts.append(x2 @ a_i.t())
        seeds.append(sd)
    return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]), seeds


def _linear(group: _Group, x, loras, residual=None):
    if not torch.is_grad_enabled():  # scoring, DPO's reference forward: no autograd node to build
        return _group_forward(x, group, loras, residual)[0]
    params = [] if loras is None else [x[0] for x in loras] + [x[1] for x in loras]
    return _GroupLinear.apply(x, group, loras, residual, *params)


class _MLPTail(torch.autograd.Function):
    """y = act(g) * u projected by the down group (+ residual), one node: it keeps g and u (which the activation's
    backward needs anyway) and recomputes the activation product in the backward instead of keeping it, so a layer
    left out of checkpointing stores two intermediate-sized tensors, not three (more kept layers in the same
    memory). ``skip_output``: a checkpointed layer's recomputation, which needs what this node saves but not its
    output (the next layer's input is already kept), so the down projection's GEMM is not run."""

    @staticmethod
    def forward(ctx, g, u, group, loras, residual, act, skip_output, *params):
        # skipping: the dropout seeds are drawn as in the forward (checkpointing restored the RNG state)
        outs, _, xa, cd, seeds = _group_forward(act[0](g, u), group, loras, residual, outputs=not skip_output)
        ctx.group, ctx.loras, ctx.cd, ctx.act, ctx.seeds = group, loras, cd, act, seeds
        ctx.has_residual = residual is not None
        ctx.save_for_backward(g, u, xa)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        g, u, xa = ctx.saved_tensors
        act_fwd, act_bwd = ctx.act
        p = act_fwd(g, u).reshape(-1, g.shape[-1])
        if p.dtype != ctx.cd:
            p = p.to(ctx.cd)
        gp, g_params = _group_backward(ctx.group, ctx.loras, ctx.cd, p, xa, grads, True, ctx.seeds)
        del p
        dg, du = act_bwd(g, u, gp.view(g.shape).to(g.dtype))
        g_res = grads[0] if ctx.has_residual else None
        return (dg, du, None, None, g_res, None, None, *g_params)


def _mlp_tail(act, group: _Group, g, u, loras, residual, skip_output: bool = False):
    if not torch.is_grad_enabled():
        return _group_forward(act[0](g, u), group, loras, residual)[0]
    params = [] if loras is None else [x[0] for x in loras] + [x[1] for x in loras]
    return _MLPTail.apply(g, u, group, loras, residual, act, skip_output, *params)


def _recomputing() -> bool:
    """Whether this forward is non-reentrant activation checkpointing's recomputation (its saved-tensor hooks are
    the innermost): then the checkpointed layer's output is discarded. Reentrant checkpointing backpropagates
    through the recomputed output, so it is never skipped there."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return bool(hooks) and getattr(hooks[0], "__qualname__", "").startswith("_recomputation_hook.")


# -- the layer ----------------------------------------------------------------------------------------------


def _groups(layer):
    g = layer.__dict__.get("_orchard_groups")
    if g is None:
        attn, mlp = layer.self_attn, layer.mlp
        d = layer.__dict__.get("_orchard_direct_dequant", True)
        g = layer.__dict__["_orchard_groups"] = (
            _Group(attn, [attn.q_proj, attn.k_proj, attn.v_proj], d), _Group(attn.o_proj, [attn.o_proj], d),
            _Group(mlp, [mlp.gate_proj, mlp.up_proj], d), _Group(mlp.down_proj, [mlp.down_proj], d))
    return g


def _swiglu(mlp):
    pair = mlp.__dict__.get("_orchard_act")
    if pair is None:
        pair = mlp.__dict__["_orchard_act"] = _activation_pair(mlp)
    return pair


def _is_silu(mlp) -> bool:
    """SiLU gate: the module's ``act_fn``, or where a kernel patch removed it (Liger's SwiGLU MLP leaves
    ``act_fn`` None), the model config's ``hidden_act``."""
    fn = getattr(mlp, "act_fn", None)
    if fn is not None:
        return isinstance(fn, torch.nn.SiLU) or type(fn).__name__ in ("SiLUActivation", "SiLU")
    return str(getattr(getattr(mlp, "config", None), "hidden_act", "")).lower() in ("silu", "swish")


def _activation_known(mlp) -> bool:
    return _is_silu(mlp) or callable(getattr(mlp, "act_fn", None))


def _activation_pair(mlp):
    """(forward, backward) of the MLP's gate activation times up. forward(g, u) -> act(g) * u; backward(g, u, d) ->
    (dg, du). SiLU: Liger's kernels on CUDA where installed (its backward recomputes the activation and writes the
    gradients over g and u, which only this node holds), else the formula; any other activation: autograd."""
    fn = getattr(mlp, "act_fn", None)
    if _is_silu(mlp):
        try:
            from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
        except ImportError:
            swiglu_forward = swiglu_backward = None

        def fwd(g, u):
            if g.is_cuda and swiglu_forward is not None:
                return swiglu_forward(g, u)[2]
            return torch.nn.functional.silu(g) * u

        def bwd(g, u, d):
            if g.is_cuda and swiglu_backward is not None and g.is_contiguous() and u.is_contiguous():
                return swiglu_backward(g, u, d.contiguous())
            up = (lambda t: t.float()) if g.dtype in (torch.float16, torch.bfloat16) else (lambda t: t)
            gf, df = up(g), up(d)
            sg = torch.sigmoid(gf)
            du = df * gf * sg
            dg = df * up(u) * sg * (1 + gf * (1 - sg))
            return dg.to(g.dtype), du.to(u.dtype)

        return fwd, bwd

    def fwd_any(g, u):
        return fn(g) * u

    def bwd_any(g, u, d):
        with torch.enable_grad():
            g1, u1 = g.detach().requires_grad_(), u.detach().requires_grad_()
            return torch.autograd.grad(fn(g1) * u1, (g1, u1), d)

    return fwd_any, bwd_any


class _ActProduct(torch.autograd.Function):
    """act(g) * u as an autograd node over the (forward, backward) pair (the down projection then keeps it)."""

    @staticmethod
    def forward(ctx, g, u, act):
        ctx.act = act
        ctx.save_for_backward(g, u)
        return act[0](g, u)

    @staticmethod
    def backward(ctx, d):
        g, u = ctx.saved_tensors
        # the pair's backward may write the gradients over its inputs (Liger): give it copies
        dg, du = ctx.act[1](g.clone(), u.clone(), d)
        return dg, du, None


def _act_product(act, g, u):
    if not torch.is_grad_enabled():
        return act[0](g, u)
    return _ActProduct.apply(g, u, act)


def _rope(attn):
    # the attention module's own module-level function: Liger patches it there
    return getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb")


def _fused_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                   use_cache=False, position_embeddings=None, **kwargs):
    plain = _plain_class(self)
    attn = self.self_attn
    states = None
    if (past_key_values is None and position_embeddings is not None and kwargs.get(SEQ_LENS_KEY) is not None
            and hidden_states.dim() == 3 and hidden_states.shape[0] == 1
            and not (self.training and getattr(attn, "attention_dropout", 0.0))):
        qkv, o, gu, down = _groups(self)
        states = [g.state() for g in (qkv, o, gu, down)]
        if any(s is False for s in states):
            states = None
    if states is None:
        return plain.forward(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, use_cache=use_cache,
                             position_embeddings=position_embeddings, **kwargs)
    t = hidden_states.shape[1]
    hd = attn.head_dim
    x = hidden_states[0]
    normed = self.input_layernorm(hidden_states)[0]
    q, k, v = _linear(qkv, normed, states[0])
    q = q.view(1, t, -1, hd).transpose(1, 2)
    k = k.view(1, t, -1, hd).transpose(1, 2)
    v = v.view(1, t, -1, hd).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = _rope(attn)(q, k, cos, sin)
    out, _ = packed_attention(attn, q, k, v, None, dropout=0.0, scaling=attn.scaling, **kwargs)
    (h,) = _linear(o, out.reshape(t, -1), states[1], residual=x)
    normed = self.post_attention_layernorm(h.unsqueeze(0))[0]
    g, u = _linear(gu, normed, states[2])
    act = _swiglu(self.mlp)
    if self.__dict__.get("_orchard_mlp_tail", True):
        # a checkpointed layer (HF checkpoints each layer on its own) being recomputed: its output is not needed
        skip = self.training and self.gradient_checkpointing and _recomputing()
        (y,) = _mlp_tail(act, down, g, u, states[3], residual=h, skip_output=skip)
    else:
        (y,) = _linear(down, _act_product(act, g, u), states[3], residual=h)
    return y.unsqueeze(0)


def _plain_class(layer):
    for cls in type(layer).__mro__:
        if not getattr(cls, "_orchard_fused_layer", False) and cls.__name__ in SUPPORTED:
            return cls
    raise TypeError(f"no plain decoder layer class above {type(layer).__name__}")


def eligible(layer) -> bool:
    """A layer of a supported architecture with the parts this forward uses (no sliding window, no q/k norms)."""
    if _plain_class_or_none(layer) is None:
        return False
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None:
        return False
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
        return False
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) or not _activation_known(mlp):
        return False
    cfg = getattr(attn, "config", None)
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm") or getattr(attn, "sliding_window", None):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        base = _base(m)
        w = getattr(base, "weight", None)
        if not hasattr(base, "out_features") or w is None:
            return False
        if getattr(w, "quant_state", None) is None and not w.dtype.is_floating_point:
            return False  # 8-bit and other integer weights: their own layers know their scales
    return True


def covers(layer) -> bool:
    """Whether the fused forward runs for this (enabled) layer's training calls as it is configured now: its
    adapters in a form this path takes, no attention dropout."""
    if not getattr(layer, "_orchard_fused_layer", False):
        return False
    if getattr(layer.self_attn, "attention_dropout", 0.0):
        return False
    return all(g.state() is not False for g in _groups(layer))


def _plain_class_or_none(layer):
    try:
        return _plain_class(layer)
    except TypeError:
        return None


def _fused_class(cls: type) -> type:
    # Why a class swap, not an instance ``forward``: the subclass keeps the layer an instance of its own class
    # (transformers' and PEFT's isinstance checks, gradient checkpointing's ``__call__``), survives deepcopy and
    # pickling (a bound method in the instance dict would point at the original), and its parent's forward is the
    # fallback for every call the fused form does not cover. :func:`disable` restores the class.
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward, "_orchard_fused_layer": True})
    return _CLASSES[cls]


def enable(model, mlp_tail: bool = True, direct_dequant: bool = True) -> int:
    """Give every eligible decoder layer of ``model`` the fused forward; returns how many now have it.
    ``mlp_tail``: the down projection with the SwiGLU product recomputed in its backward (:class:`_MLPTail`);
    ``direct_dequant``: 4-bit weights dequantized through bitsandbytes' C entry point (CUDA, once checked)."""
    n = 0
    for layer in backbone(model).layers:
        if getattr(layer, "_orchard_fused_layer", False) or not eligible(layer):
            continue
        layer.__class__ = _fused_class(type(layer))
        layer.__dict__["_orchard_mlp_tail"] = bool(mlp_tail)
        layer.__dict__["_orchard_direct_dequant"] = bool(direct_dequant)
        # the kept block scales now, before training: the kept-layer planner counts memory present at the start
        # as the model's own, and anything first allocated in step 1 as per-token cost
        for group in _groups(layer):
            for base in group.bases:
                base.__dict__["_orchard_q"] = _quantized_view(base.weight)
        n += 1
    return n


def disable(model) -> int:
    """Undo :func:`enable` (benchmarks reuse one loaded model for several paths); returns how many layers."""
    n = 0
    for layer in backbone(model).layers:
        if getattr(layer, "_orchard_fused_layer", False):
            kept = is_kept(layer)
            if kept:  # the kept-layer class sits above the fused one
                unkeep(layer)
            layer.mlp.__dict__.pop("_orchard_act", None)
            layer.__dict__.pop("_orchard_mlp_tail", None)
            layer.__dict__.pop("_orchard_direct_dequant", None)
            for group in layer.__dict__.pop("_orchard_groups", ()):
                _drop_casts(group.owner)
                for base in group.bases:
                    base.__dict__.pop("_orchard_q", None)  # frees the kept block scales
            layer.__class__ = type(layer).__mro__[1]
            if kept:
                keep(layer)
            n += 1
    return n
