"""QLoRA training speed: orchard's fast path against the plain TRL path and Unsloth, side by side in one run.

One command on a GPU machine (wheels as in benchmarks/README.md) runs everything on the same random-weight
Llama-3-8B-shaped model, the same data and the same LoRA (r=16, alpha=16, no dropout, all linear layers) over an
NF4 double-quant 4-bit base with bf16 compute:

    python3 benchmarks/train_speed.py all --out $OUT            # 8B on the GPU (wheels installed by `all`)
    .venv/bin/python benchmarks/train_speed.py all --size tiny --steps 4 --warmup 1 --no-unsloth   # CPU smoke

Paths: ``plain_*`` = TRL 1.16 defaults (padded batches, SDPA, gradient checkpointing); ``fast_*`` = the same
trainer with ``orchard.align.fast`` applied (variants named in the table); ``unsloth_sft`` = Unsloth's own
trainer in its own process (it needs older trl/datasets). Every path runs ``warmup + steps`` optimizer steps;
only the last ``steps`` are timed (after ``torch.cuda.synchronize``). Useful tokens are non-padding tokens
counted from each micro batch. MFU = useful tokens/s x FLOPs per token / measured bf16 matmul rate, with
FLOPs per token = 4N for SFT (forward 2N + input gradients 2N; recomputation not counted) and 6N for DPO (the
reference forward adds 2N), N = parameters outside the input embedding. The loss of the first steps of each
fast path is checked against the plain path's (same batches, same LoRA init). Writes
``benchmarks/results/train_speed-<date>-<gpu>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SIZES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=False),
}
LORA = dict(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Loss agreement tolerances (absolute, per logged step): bf16 kernels differ between the padded and the
# padding-free attention, so the losses agree to rounding, not bit for bit.
# dpo: relative, on the step-1 summed log-probs; grad_norm: relative, step 1 (bf16 kernels sum in other orders)
TOL = {"sft": 0.02, "dpo": 0.005, "grad_norm": 0.03}

# variant name -> (stage, fast path overrides or None for the plain path, batch size multiplier, checkpointing,
# gradient accumulation steps asked for). ``*_ga2``: 2 micro batches of the default size per optimizer step (the
# effective batch a recipe asks for); the fast path may fold them into one micro batch of twice the size.
VARIANTS = {
    "plain_sft": ("sft", None, 1, True, 1),
    "plain_dpo": ("dpo", None, 1, True, 1),
    "plain_sft_bs2x": ("sft", None, 2, True, 1),
    "plain_dpo_bs2x": ("dpo", None, 2, True, 1),
    "plain_sft_ga2": ("sft", None, 1, True, 2),
    "plain_dpo_ga2": ("dpo", None, 1, True, 2),
    "fast_sft_unpad": ("sft", dict(liger=False, keep_layers=0, fused_lora=False), 1, True, 1),
    "fast_sft_liger": ("sft", dict(unpad=False, keep_layers=0, fused_lora=False), 1, True, 1),
    "fast_sft_nofuse": ("sft", dict(fused_lora=False), 1, True, 1),
    "fast_sft_novarlen": ("sft", dict(varlen_attention=False), 1, True, 1),
    "fast_sft": ("sft", dict(), 1, True, 1),
    "fast_sft_nokeep": ("sft", dict(keep_layers=0), 1, True, 1),
    "fast_sft_keep8": ("sft", dict(keep_layers=8), 1, True, 1),
    "fast_sft_keep12": ("sft", dict(keep_layers=12), 1, True, 1),
    "fast_sft_bs2x": ("sft", dict(), 2, True, 1),
    "fast_sft_ga2": ("sft", dict(), 1, True, 2),
    "fast_sft_ga2_nofold": ("sft", dict(fold_accumulation=False), 1, True, 2),
    "fast_sft_ga2_fold": ("sft", dict(fold_accumulation=True), 1, True, 2),  # forced (CPU tests)
    "fast_dpo": ("dpo", dict(), 1, True, 1),
    "fast_sft_nolayer": ("sft", dict(fused_layers=False), 1, True, 1),
    "fast_dpo_nolayer": ("dpo", dict(fused_layers=False), 1, True, 1),
    "fast_sft_ga2_nolayer": ("sft", dict(fused_layers=False), 1, True, 2),
    "fast_dpo_ga2_nolayer": ("dpo", dict(fused_layers=False), 1, True, 2),
    "fast_sft_notail": ("sft", dict(mlp_tail=False), 1, True, 1),
    "fast_dpo_notail": ("dpo", dict(mlp_tail=False), 1, True, 1),
    "fast_dpo_nofuse": ("dpo", dict(fused_lora=False), 1, True, 1),
    "fast_dpo_noshare": ("dpo", dict(shared_prefix=False), 1, True, 1),
    "fast_dpo_ga2_noshare": ("dpo", dict(shared_prefix=False), 1, True, 2),
    "fast_dpo_nokeep": ("dpo", dict(keep_layers=0), 1, True, 1),
    "fast_dpo_keep8": ("dpo", dict(keep_layers=8), 1, True, 1),
    "fast_dpo_bs2x": ("dpo", dict(), 2, True, 1),
    "fast_dpo_ga2": ("dpo", dict(), 1, True, 2),
    "fast_dpo_ga2_fold": ("dpo", dict(fold_accumulation=True), 1, True, 2),  # forced (CPU tests)
}


def _orchard_importable() -> None:
    """Make ``orchard.align`` importable from a bare checkout (the GPU image has no orchard install).

    setuptools maps the folders synth/, review/, align/ to orchard.*; do the same mapping by hand.
    """
    try:
        import orchard.align.fast  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.util

    sys.path.insert(0, str(ROOT))
    import orchard

    for sub in ("synth", "review", "align"):
        name = f"orchard.{sub}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / sub / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        setattr(orchard, sub, mod)


# ---- model and data --------------------------------------------------------------------------------------


def make_model(size: str, path: Path) -> dict:
    """Random-weight Llama of the given shape (bf16, built on the GPU when there is one) + word tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (path / "config.json").exists():
        return {"made": str(path), "s": 0.0, "reused": True}
    t0 = time.time()
    cfg = LlamaConfig(**SIZES[size])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(path))
    del model
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, cfg.vocab_size)}}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    # A chat template with generation markers, so the same model serves orchard's conversational stages.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }} <eos> "
        "{% endgeneration %}{% else %}{{ m['content'] }} {% endif %}{% endfor %}"
    )
    tok.save_pretrained(str(path))
    return {"made": str(path), "s": round(time.time() - t0, 1), "reused": False}


def sft_rows(n: int, maxlen: int, vocab: int, seed: int = 0) -> list[dict]:
    """Token-id rows with lengths uniform in [maxlen/8, maxlen] (256..2048 at 2048)."""
    rng = random.Random(seed)
    lens = [rng.randint(maxlen // 8, maxlen) for _ in range(n)]
    return [{"input_ids": [rng.randrange(3, vocab) for _ in range(n_)]} for n_ in lens]


def dpo_rows(n: int, maxlen: int, vocab: int, seed: int = 1) -> list[dict]:
    """Prompts of maxlen/16..maxlen/4 words, chosen and rejected of maxlen/16..maxlen/2 (each sequence <= 3/4 maxlen)."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(k))

    # completions start with a space so that the last prompt word and the first completion word stay two words
    return [{"prompt": words(rng.randint(maxlen // 16, maxlen // 4)),
             "chosen": " " + words(rng.randint(maxlen // 16, maxlen // 2)),
             "rejected": " " + words(rng.randint(maxlen // 16, maxlen // 2))} for _ in range(n)]


def bf16_matmul_rate() -> float | None:
    """Measured dense bf16 matmul rate in TFLOP/s (median of timed 8192^3 products on random data)."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    del a, b
    return round(2 * n**3 / times[len(times) // 2] / 1e12, 1)


def model_params(path: Path) -> dict:
    return model_params_of(json.loads((path / "config.json").read_text()))


def model_params_of(cfg: dict) -> dict:
    h, i, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    per_layer = h * (h + 2 * kv + h) + 3 * h * i + 2 * h
    n = L * per_layer + h + V * h  # + final norm + lm_head; the input embedding is a lookup, no FLOPs
    return {"n_flop_params": n, "vocab": V, "layers": L}


# ---- one training path -----------------------------------------------------------------------------------


class _Meter:
    """Per-step wall times (after a device sync) and useful tokens per micro batch."""

    def __init__(self):
        from transformers import TrainerCallback

        import torch

        meter = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                meter.t.append(time.perf_counter())

            def on_train_begin(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                meter.t0 = time.perf_counter()

        self.cb = CB()
        self.t: list[float] = []
        self.t0 = None
        self.tokens: list[int] = []  # per micro batch, in order
        self.seqs: list[int] = []

    def count(self, inputs: dict, pad_id: int | None) -> None:
        am = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        if am is not None and am.dim() == 2:
            self.tokens.append(int(am.sum()))
            self.seqs.append(int(am.shape[0]))
        else:  # padding-free batches (Unsloth's default): one row, real tokens only (+ any tail padding)
            pos = inputs.get("position_ids")
            self.tokens.append(int((ids != pad_id).sum()) if pad_id is not None else ids.numel())
            self.seqs.append(int((pos == 0).sum()) if pos is not None else int(ids.shape[0]))


def _summary(meter: _Meter, warmup: int, grad_accum: int, losses: list, stage: str, bs: int,
             steps: int | None = None) -> dict:
    """``steps``: the timed window after the warm-up (default: every step after it); profiled steps come after
    the window and are not timed."""
    steps_total = len(meter.t)
    timed = steps_total - warmup if steps is None else min(steps, steps_total - warmup)
    t_start = meter.t[warmup - 1] if warmup > 0 else meter.t0
    dt = meter.t[warmup + timed - 1] - t_start
    toks = sum(meter.tokens[warmup * grad_accum:(warmup + timed) * grad_accum])
    seqs = sum(meter.seqs[warmup * grad_accum:(warmup + timed) * grad_accum])
    out = {"steps_total": steps_total, "steps_timed": timed, "step_s": round(dt / timed, 4),
           "useful_tokens_per_s": round(toks / dt, 1), "tokens_timed": toks,
           "step_times_s": [round(b - a, 3) for a, b in zip([meter.t0] + meter.t, meter.t)],
           "losses": [round(x, 5) for x in losses], "batch_size": bs}
    if stage == "dpo":
        out["pairs_per_s"] = round(seqs / 2 / dt, 3)
    return out


def run_trl_variant(name: str, base, tok, data, a, plan_over: dict | None, bs: int, ckpt: bool, ga: int = 1):
    """Train one TRL path for warmup + steps optimizer steps on ``base`` (LoRA added, then removed again)."""
    import torch
    from peft import LoraConfig

    stage = VARIANTS[name][0]
    _orchard_importable()
    from orchard.align import fast
    from orchard.align.fast import unpad

    plan = None
    if plan_over is not None:
        # the config's switches (FastConfig, as a recipe's `fast:` block sets them: --fast KEY=VALUE for every
        # fast path, then the variant's own), then what only the plan holds (liger, unpad, fused_lora, folding)
        from orchard.align.config import DPOFastConfig, FastConfig

        cls = DPOFastConfig if stage == "dpo" else FastConfig
        switches = {**fast_switches(getattr(a, "fast", None), cls),
                    **{k: v for k, v in plan_over.items() if k in cls.model_fields}}
        plan = fast.decide(cls(**{"mode": "on", **switches}))
        for k, v in plan_over.items():
            if k not in cls.model_fields:
                setattr(plan, k, v)
        if not torch.cuda.is_available():
            plan.liger = False
    wanted = a.profile_only.split(",") if getattr(a, "profile_only", None) else None
    profiled = bool(a.profile) and (wanted is None or name in wanted)
    common = dict(output_dir=f"/tmp/train-speed-{name}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                  max_steps=a.warmup + a.steps + (a.profile if profiled else 0), bf16=torch.cuda.is_available(), gradient_checkpointing=ckpt,
                  gradient_checkpointing_kwargs={"use_reentrant": False} if ckpt else None, max_length=a.maxlen,
                  logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=42,
                  use_cpu=not torch.cuda.is_available(), lr_scheduler_type="constant", disable_tqdm=True)
    if plan is not None:
        common = fast.trainer_kwargs(common, plan, model=base,
                                     tokens_per_example=a.maxlen * (2 if stage == "dpo" else 1))
    bs, ga = common["per_device_train_batch_size"], common["gradient_accumulation_steps"]
    lora = LoraConfig(task_type="CAUSAL_LM", **LORA)
    meter = _Meter()
    torch.manual_seed(0)  # same LoRA init on every path
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(learning_rate=2e-4, packing=False, **common)
        tr = SFTTrainer(model=base, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                        callbacks=[meter.cb])
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(learning_rate=5e-6, beta=0.1, **common)
        tr = DPOTrainer(model=base, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                        callbacks=[meter.cb])
    applied = fast.apply(tr, plan) if plan is not None else {"fast_path": False}
    orig_step = tr.training_step

    def training_step(model, inputs, *r, **k):
        meter.count(inputs, tok.pad_token_id)
        return orig_step(model, inputs, *r, **k)

    tr.training_step = training_step
    prof = _Profiler(a.warmup + a.steps, a.profile) if profiled and not a.pyprofile else None  # after the window
    if prof:
        tr.add_callback(prof.cb)
    if profiled and a.pyprofile:
        tr.add_callback(_PyProfile(a.warmup + a.steps, a.profile, name, str(Path(a.out).parent)).cb)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    err = None
    try:
        tr.train()
    except Exception as e:  # one path failing must not lose the others' numbers
        import traceback

        traceback.print_exc()
        err = f"{type(e).__name__}: {e}"[:1500]
    res = {"path": name, "stage": stage, "tool": "orchard" if plan is not None else "trl", "applied": applied,
           "checkpointing": ckpt}
    if err is None:
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        res.update(_summary(meter, a.warmup, ga, losses, stage, bs, steps=a.steps))
        res["grad_accum"], res["examples_per_step"] = ga, bs * ga
        first = tr.state.log_history[0] if tr.state.log_history else {}
        res["first_step"] = {k: first.get(k) for k in ("loss", "logps/chosen", "logps/rejected", "grad_norm")
                             if k in first}
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    else:
        res["error"] = err
    if plan is not None:
        fast.finish(tr, res["applied"])  # the kept-layer planner's report, as the stages record it
    if prof:
        res["profile"] = prof.summary()
    # hand the bare 4-bit base back for the next path
    model = tr.model
    from orchard.align.fast import layer as fast_layer
    from orchard.align.fast.checkpointing import reset_kept_layers

    from orchard.align.fast import host as fast_host

    reset_kept_layers(model)
    fast_host.restore(model, tr)
    fast_layer.disable(model)
    unpad.disable(model)
    base = model.unload() if hasattr(model, "unload") else model
    if hasattr(base, "gradient_checkpointing_disable"):
        base.gradient_checkpointing_disable()
    del tr, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print("RESULT " + json.dumps({k: v for k, v in res.items() if k != "step_times_s"}), flush=True)
    return res, base


class _PyProfile:
    """cProfile over ``n`` optimizer steps from step ``start``: where the host's time goes (the GPU waits on it)."""

    def __init__(self, start: int, n: int, name: str, out_dir: str | None):
        import cProfile

        from transformers import TrainerCallback

        me = self
        self.prof, self.name, self.out_dir = cProfile.Profile(), name, out_dir
        self.on = False

        self.syncs: dict[str, int] = {}

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == start and not me.on:
                    me.sync_trace(True)
                    me.prof.enable()
                    me.on = True

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == start + n and me.on:
                    me.prof.disable()
                    me.sync_trace(False)
                    me.on = False
                    me.dump()

        self.cb = CB()

    def sync_trace(self, on: bool) -> None:
        """Every host-device synchronization in the window, by call site (torch's sync debug mode): each one
        drains the GPU's queue, which then idles while the host issues the next kernels."""
        import traceback
        import warnings

        import torch

        if not torch.cuda.is_available():
            return
        if on:
            self._show = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if "synchroniz" not in str(message):
                    return self._show(message, category, filename, lineno, file, line)
                frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
                site = " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(frames[-6:]))
                self.syncs[site] = self.syncs.get(site, 0) + 1

            warnings.showwarning = show
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(1)
        else:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._show
            top = sorted(self.syncs.items(), key=lambda kv: -kv[1])
            text = "\n".join(f"{c:5d}  {site}" for site, c in top)
            print(f"SYNCS {self.name}: {sum(self.syncs.values())} in the window\n{text}", flush=True)
            if self.out_dir:
                Path(self.out_dir, f"syncs-{self.name}.txt").write_text(text)

    def dump(self) -> None:
        import io
        import pstats

        if self.out_dir:
            self.prof.dump_stats(str(Path(self.out_dir, f"pyprofile-{self.name}.prof")))
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(self.prof, stream=buf).sort_stats(key).print_stats(45)
            text = buf.getvalue()
            print(f"PYPROFILE {self.name} by {key}\n" + "\n".join(text.splitlines()[:75]), flush=True)
            if self.out_dir:
                Path(self.out_dir, f"pyprofile-{self.name}-{key}.txt").write_text(text)


class _Profiler:
    """torch.profiler over ``n`` optimizer steps after the warm-up: where the step's time goes."""

    def __init__(self, warmup: int, n: int):
        import torch
        from transformers import TrainerCallback

        me = self
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA])
        self.t = [None, None]

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    me.prof.start()
                    me.t[0] = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == warmup + n:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    me.t[1] = time.perf_counter()
                    me.prof.stop()

        self.cb = CB()

    def summary(self, top: int = 18) -> dict:
        if self.t[1] is None:
            return {}
        ev = self.prof.key_averages()
        dev = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
        wall = (self.t[1] - self.t[0]) * 1e3
        # kernels only (operator rows also carry their kernels' device time: summing both double-counts)
        kernels = [e for e in self.prof.events() if e.device_type.name == "CUDA"]
        spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
        busy, gaps, end = 0.0, [], None
        for s, t in spans:
            if end is None or s > end:
                if end is not None:
                    gaps.append(s - end)
                busy += t - s
                end = t
            elif t > end:
                busy += t - end
                end = t
        cats: dict[str, float] = {}
        for e in kernels:
            n = e.name.lower()
            # attention first: flash kernels' template arguments name cutlass types
            c = ("attention" if any(x in n for x in ("flash", "fmha", "attention"))
                 else "gemm" if any(x in n for x in ("nvjet", "gemm", "cutlass", "sm90_xmma", "ampere_", "matmul"))
                 else "dequant" if "dequant" in n
                 else "triton" if ("triton" in n or "liger" in n or "_kernel_" in n or n.startswith("_"))
                 and "at::native" not in n
                 else "memcpy/set" if "memcpy" in n or "memset" in n
                 else "reduce" if "reduce" in n else "elementwise")
            cats[c] = cats.get(c, 0.0) + (e.time_range.end - e.time_range.start) / 1e3
        top_k = {}
        for e in kernels:
            top_k[e.name[:80]] = top_k.get(e.name[:80], 0.0) + (e.time_range.end - e.time_range.start) / 1e3
        table = sorted(((k, round(v, 1)) for k, v in top_k.items()), key=lambda r: -r[1])[:top]
        cpu_rows = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        cpu_table = [(e.key[:70], e.count, round(e.self_cpu_time_total / 1e3, 1)) for e in cpu_rows]
        syncs = sum(e.count for e in ev if "Synchronize" in e.key)
        gaps.sort(reverse=True)
        busy_ms = busy / 1e3
        print(f"PROFILE wall {wall:.0f} ms, GPU busy {busy_ms:.0f} ms ({busy_ms / wall:.0%}), {len(kernels)} kernels, "
              f"{syncs} syncs, idle in gaps > 50 us: {sum(g for g in gaps if g > 50) / 1e3:.0f} ms")
        print("  categories (ms):", {k: round(v, 1) for k, v in sorted(cats.items(), key=lambda r: -r[1])})
        for r in table:
            print("  GPU", r)
        for r in cpu_table:
            print("  CPU", r)
        return {"wall_ms": round(wall), "gpu_busy_ms": round(busy_ms), "kernels": len(kernels), "syncs": syncs,
                "idle_gaps_over_50us_ms": round(sum(g for g in gaps if g > 50) / 1e3, 1),
                "largest_gaps_ms": [round(g / 1e3, 2) for g in gaps[:10]],
                "categories_ms": {k: round(v, 1) for k, v in cats.items()}, "top_gpu": table, "top_cpu": cpu_table}


def _data_multiplier(variants: str) -> int:
    """Examples per step of the largest variant, in units of the default batch: sizes every path's dataset."""
    return max(VARIANTS[n][2] * VARIANTS[n][4] for n in variants.split(",") if n in VARIANTS)


def fast_switches(items: list[str] | None, cls) -> dict:
    """``--fast KEY=VALUE`` items (values read as YAML) that ``cls`` (FastConfig or DPOFastConfig) has."""
    import yaml

    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        if k.strip() in cls.model_fields:
            out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_trl(a) -> None:
    """All TRL-based paths (plain and orchard) in one process on one loaded 4-bit model."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = Path(a.model)
    out = {"rate_tflops": bf16_matmul_rate(), "versions": _versions(), "results": [],
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    print("RATE", out["rate_tflops"], flush=True)
    V = json.loads((path / "config.json").read_text())["vocab_size"]
    gpu = torch.cuda.is_available()
    t0 = time.time()
    kw = dict(dtype=torch.bfloat16 if gpu else torch.float32, attn_implementation="sdpa")
    if gpu:
        kw.update(device_map={"": 0}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))
    base = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    out["load_s"] = round(time.time() - t0, 1)
    tok = AutoTokenizer.from_pretrained(str(path))
    names = a.variants.split(",")
    # Liger patches module forwards for good, so plain paths must run before any fast one.
    names = sorted(names, key=lambda n: VARIANTS[n][1] is not None)
    mult = _data_multiplier(a.variants)
    total = a.warmup + a.steps + a.profile
    sft = Dataset.from_list(sft_rows(mult * a.bs * total, a.maxlen, V))
    dpo = Dataset.from_list(dpo_rows(mult * a.dpo_bs * total, a.maxlen, V))
    for name in names:
        stage, over, mult, ckpt, ga = VARIANTS[name]
        bs = (a.bs if stage == "sft" else a.dpo_bs) * mult
        res, base = run_trl_variant(name, base, tok, sft if stage == "sft" else dpo, a, over, bs, ckpt, ga)
        out["results"].append(res)
        Path(a.out).write_text(json.dumps(out, indent=1))  # after each path: a timeout keeps what finished


def cmd_unsloth(a) -> None:
    """Unsloth's SFT on the same model, data and LoRA, in its own process (its own trl/datasets)."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401  (must be imported before trl/transformers/peft)
    from unsloth import FastLanguageModel

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    path = Path(a.model)
    V = json.loads((path / "config.json").read_text())["vocab_size"]
    out = {"versions": _versions(("unsloth", "unsloth_zoo")), "results": []}
    t0 = time.time()
    model, tok = FastLanguageModel.from_pretrained(model_name=str(path), max_seq_length=a.maxlen,
                                                   dtype=torch.bfloat16, load_in_4bit=True, local_files_only=True)
    out["load_s"] = round(time.time() - t0, 1)
    model = FastLanguageModel.get_peft_model(model, r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=0,
                                             bias="none", target_modules=UNSLOTH_TARGETS,
                                             use_gradient_checkpointing="unsloth", random_state=3407)
    # the same dataset (size included: the trainer's shuffle depends on it) as the TRL paths of this run
    data = Dataset.from_list(sft_rows(_data_multiplier(a.variants) * a.bs * (a.warmup + a.steps + a.profile),
                                      a.maxlen, V))
    meter = _Meter()
    args = SFTConfig(output_dir="/tmp/train-speed-unsloth", per_device_train_batch_size=a.bs,
                     gradient_accumulation_steps=1, max_steps=a.warmup + a.steps, learning_rate=2e-4, bf16=True,
                     max_length=a.maxlen, packing=False, logging_steps=1, save_strategy="no", report_to="none",
                     dataloader_num_workers=0, seed=42, lr_scheduler_type="constant")
    tr = SFTTrainer(model=model, processing_class=tok, train_dataset=data, args=args, callbacks=[meter.cb])
    orig_step = tr.training_step

    def training_step(model_, inputs, *r, **k):
        meter.count(inputs, tok.pad_token_id)
        return orig_step(model_, inputs, *r, **k)

    tr.training_step = training_step
    torch.cuda.reset_peak_memory_stats()
    res = {"path": "unsloth_sft", "stage": "sft", "tool": "unsloth",
           "padding_free": getattr(tr.args, "padding_free", None)}
    try:
        tr.train()
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        res.update(_summary(meter, a.warmup, 1, losses, "sft", a.bs))
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except Exception as e:
        import traceback

        traceback.print_exc()
        res["error"] = f"{type(e).__name__}: {e}"[:1500]
    out["results"].append(res)
    print("RESULT " + json.dumps({k: v for k, v in res.items() if k != "step_times_s"}), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


def _versions(extra=()) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {}
    for k in ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "liger_kernel", "triton", *extra):
        try:
            v[k] = version(k)
        except PackageNotFoundError:
            pass
    return v


# ---- report ----------------------------------------------------------------------------------------------


def report(parts: list[dict], model_dir: Path | None, a, gpu: str | None = None, n: int | None = None) -> dict:
    import torch

    results = [r for p in parts for r in p.get("results", [])]
    rate = next((p["rate_tflops"] for p in parts if p.get("rate_tflops")), None)
    n = n or model_params(model_dir)["n_flop_params"]
    by = {r["path"]: r for r in results}
    gpu = gpu or next((p["gpu"] for p in parts if p.get("gpu")), None) or (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    for r in results:
        if "error" in r:
            continue
        # Median step as a second view: a few steps per run take 2-3x longer (allocator, new shapes, Unsloth's
        # compilation); the mean over the timed window (what a user pays) is the headline, the median shows
        # the steady rate without those spikes.
        timed = sorted(r["step_times_s"][-r["steps_timed"]:])
        med = (timed[(len(timed) - 1) // 2] + timed[len(timed) // 2]) / 2
        r["step_s_median"] = round(med, 4)
        r["useful_tokens_per_s_median"] = round(r["tokens_timed"] / r["steps_timed"] / med, 1)
    for r in results:
        if "error" in r:
            continue
        per_tok = (4 if r["stage"] == "sft" else 6) * n
        r["mfu"] = round(r["useful_tokens_per_s"] * per_tok / (rate * 1e12), 4) if rate else None
        plain = by.get(f"plain_{r['stage']}")
        key = "useful_tokens_per_s" if r["stage"] == "sft" else "pairs_per_s"
        if plain and "error" not in plain:
            r["x_plain"] = round(r[key] / plain[key], 3)
        # The plain path doing the same optimizer step (same examples per step; of those, the one at TRL's default
        # micro batch, i.e. with gradient accumulation): speed at equal math, and the loss comparison.
        ex = r.get("examples_per_step", r["batch_size"])
        twins = sorted((q for q in results if q["tool"] == "trl" and q["stage"] == r["stage"] and "error" not in q
                        and q.get("examples_per_step", q["batch_size"]) == ex), key=lambda q: q["batch_size"])
        twin = twins[0] if twins else None
        if twin is not None:
            r["x_plain_same_step"] = round(r[key] / twin[key], 3)
            r["plain_same_step"] = twin["path"]
        if r["tool"] == "unsloth" and plain and "error" not in plain:
            # Unsloth draws its own LoRA A matrices (random_state=3407), so only step 1 (B = 0: every path
            # is still the base model) is the same computation; later steps legitimately differ.
            diff = abs(r["losses"][0] - plain["losses"][0]) if r["losses"] and plain["losses"] else None
            r["loss_check"] = {"what": "step-1 loss (own LoRA init afterwards)", "max_abs_diff": diff,
                               "tolerance": TOL["sft"], "ok": diff is not None and diff <= TOL["sft"]}
        elif twin is not None and twin["path"] != r["path"] and r["stage"] == "sft":
            k = min(3, len(r["losses"]), len(twin["losses"]))
            diff = max(abs(x - y) for x, y in zip(r["losses"][:k], twin["losses"][:k])) if k else None
            gn = _grad_norm_rel(r, twin)
            r["loss_check"] = {"what": f"loss of the first {k} steps and step-1 gradient norm vs {twin['path']}",
                               "max_abs_diff": diff, "tolerance": TOL["sft"], "grad_norm_rel_diff": gn,
                               "grad_norm_tolerance": TOL["grad_norm"],
                               "ok": diff is not None and diff <= TOL["sft"] and gn is not None
                               and gn <= TOL["grad_norm"]}
        elif twin is not None and twin["path"] != r["path"]:
            # DPO on random weights: sequence log-probs are ~ -7,000, so after one update the loss moves with
            # bf16 rounding of those sums; the same-math check is the first step (policy == reference):
            # loss exactly ln 2 and the summed log-probs of chosen and rejected equal within 0.5%.
            f, g = r.get("first_step", {}), twin.get("first_step", {})
            rel = max(abs(f[k] - g[k]) / abs(g[k]) for k in ("logps/chosen", "logps/rejected")
                      if k in f and k in g and g[k]) if f and g else None
            dl = abs(f.get("loss", 0) - g.get("loss", 0)) if f and g else None
            gn = _grad_norm_rel(r, twin)
            r["loss_check"] = {"what": f"step-1 loss, chosen/rejected log-probs and gradient norm vs {twin['path']}",
                               "max_abs_diff": dl, "logps_max_rel_diff": rel, "tolerance": TOL["dpo"],
                               "grad_norm_rel_diff": gn, "grad_norm_tolerance": TOL["grad_norm"],
                               "ok": rel is not None and rel <= TOL["dpo"] and dl <= 1e-3 and gn is not None
                               and gn <= TOL["grad_norm"]}
        uns = by.get("unsloth_sft")
        if r["stage"] == "sft" and uns and "error" not in uns:
            r["x_unsloth"] = round(r["useful_tokens_per_s"] / uns["useful_tokens_per_s"], 3)
            r["x_unsloth_median"] = round(r["useful_tokens_per_s_median"] / uns["useful_tokens_per_s_median"], 3)
    return {"date": _dt.date.today().isoformat(), "gpu": gpu, "bf16_matmul_tflops": rate, "n_flop_params": n,
            "maxlen": a.maxlen, "lora": LORA, "warmup_steps": a.warmup, "timed_steps": a.steps,
            "versions": {k: p.get("versions") for k, p in zip(("trl", "unsloth"), parts)},
            "load_s": [p.get("load_s") for p in parts], "results": results}


def _grad_norm_rel(r: dict, twin: dict):
    """Relative difference of the step-1 gradient norms (the loss alone misses a gradient that does not flow:
    step 1's loss is computed before any update)."""
    a, b = r.get("first_step", {}).get("grad_norm"), twin.get("first_step", {}).get("grad_norm")
    return abs(a - b) / abs(b) if a is not None and b else None


def print_table(rep: dict) -> None:
    cols = ["path", "bs x ga", "step s", "useful tok/s", "tok/s@median", "pairs/s", "peak GiB", "MFU", "x plain",
            "x plain same step",
            "x unsloth", "x uns@median", "loss check"]
    rows = []
    for r in rep["results"]:
        if "error" in r:
            rows.append([r["path"], "", "", "ERROR " + r["error"][:60]] + [""] * 9)
            continue
        lc = r.get("loss_check")
        rows.append([r["path"], f"{r['batch_size']}x{r.get('grad_accum', 1)}", f"{r['step_s']:.3f}", f"{r['useful_tokens_per_s']:,.0f}",
                     f"{r['useful_tokens_per_s_median']:,.0f}",
                     f"{r['pairs_per_s']:.2f}" if "pairs_per_s" in r else "",
                     f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "",
                     f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "", f"{r['x_plain']:.2f}" if "x_plain" in r else "",
                     f"{r['x_plain_same_step']:.2f}" if "x_plain_same_step" in r else "",
                     f"{r['x_unsloth']:.2f}" if "x_unsloth" in r else "",
                     f"{r['x_unsloth_median']:.2f}" if "x_unsloth_median" in r else "",
                     "" if not lc else f"{'ok' if lc['ok'] else 'FAIL'} {lc['max_abs_diff']:.4f}<={lc['tolerance']}"
                     + (f" g{lc['grad_norm_rel_diff']:.3f}" if lc.get("grad_norm_rel_diff") is not None else "")])
    w = [max(len(c), *(len(x[i]) for x in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print(f"\n{rep['gpu']}  {rep['date']}  bf16 matmul {rep['bf16_matmul_tflops']} TFLOP/s  "
          f"({rep['timed_steps']} timed steps after {rep['warmup_steps']} warm-up)")
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(cols)))
    for x in rows:
        print("  ".join(v.ljust(w[i]) for i, v in enumerate(x)))


def summarize_runs(reps: list[dict], names: list[str]) -> dict:
    """Across several runs (each side by side in itself): per path, each run's ratios to the plain path (on the
    mean and on the median step) and to Unsloth, and their medians. The plain path's own speed moves between runs
    (8-20% on the H100s lent here), so one run's ratio is one draw."""
    import statistics

    rows: dict[str, dict] = {}
    for rep, name in zip(reps, names):
        by = {r["path"]: r for r in rep["results"] if "error" not in r}
        for r in by.values():
            if r["tool"] == "trl":
                continue
            plain = by.get(r.get("plain_same_step") or f"plain_{r['stage']}")
            key = "useful_tokens_per_s" if r["stage"] == "sft" else "pairs_per_s"
            row = rows.setdefault(r["path"], {"runs": [], "x_plain": [], "x_plain_median_step": [], "x_unsloth": []})
            row["runs"].append(Path(name).name)
            row["x_plain"].append(r.get("x_plain_same_step", r.get("x_plain")))
            if plain and r["stage"] == "sft":
                row["x_plain_median_step"].append(round(r["useful_tokens_per_s_median"]
                                                        / plain["useful_tokens_per_s_median"], 3))
            elif plain:  # pairs per second on the median step: the same ratio as tokens on the median step
                row["x_plain_median_step"].append(round(plain["step_s_median"] / r["step_s_median"]
                                                        * r["examples_per_step"] / plain["examples_per_step"], 3))
            if r.get("x_unsloth") is not None:
                row["x_unsloth"].append(r["x_unsloth"])
    for row in rows.values():
        for k in ("x_plain", "x_plain_median_step", "x_unsloth"):
            vals = [v for v in row[k] if v is not None]
            row[f"{k}_median_of_runs"] = round(statistics.median(vals), 3) if vals else None
    return rows


def print_runs(rows: dict) -> None:
    print(f"{'path':<16} {'runs':>4}  {'x plain (each run)':<26} {'median':>6}  {'x plain, median step':<26} "
          f"{'median':>6}  {'x unsloth':<22} {'median':>6}")
    for path, r in rows.items():
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs if x is not None)  # noqa: E731
        med = lambda v: f"{v:.2f}" if v is not None else ""  # noqa: E731
        print(f"{path:<16} {len(r['runs']):>4}  {fmt(r['x_plain']):<26} {med(r['x_plain_median_of_runs']):>6}  "
              f"{fmt(r['x_plain_median_step']):<26} {med(r['x_plain_median_step_median_of_runs']):>6}  "
              f"{fmt(r['x_unsloth']):<22} {med(r['x_unsloth_median_of_runs']):>6}")


# ---- orchestration ---------------------------------------------------------------------------------------


def cmd_all(a) -> None:
    """make the model, run the TRL paths and Unsloth each in its own process, then report."""
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(a.model_dir) / f"llama-{a.size}"
    print("MAKE", json.dumps(make_model(a.size, model_dir)), flush=True)
    common = ["--model", str(model_dir), "--steps", str(a.steps), "--warmup", str(a.warmup), "--bs", str(a.bs),
              "--maxlen", str(a.maxlen)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    parts = []
    trl_out = outdir / "trl.json"
    if a.trl_site:
        env["PYTHONPATH"] = os.pathsep.join([a.trl_site, str(ROOT)])
    try:
        subprocess.run([sys.executable, __file__, "trl", *common, "--dpo-bs", str(a.dpo_bs), "--variants",
                        a.variants, "--profile", str(a.profile), *(["--pyprofile"] if a.pyprofile else []),
                        *[x for kv in a.fast or [] for x in ("--fast", kv)],
                        *(["--profile-only", a.profile_only] if a.profile_only else []), "--out", str(trl_out)], env=env, check=False,
                       timeout=a.trl_timeout)
    except subprocess.TimeoutExpired:
        print("trl run timed out", flush=True)
    if trl_out.exists():
        parts.append(json.loads(trl_out.read_text()))
    if not a.no_unsloth:
        uns_out = outdir / "unsloth.json"
        env_u = dict(env, PYTHONPATH=os.pathsep.join([p for p in (a.unsloth_site, str(ROOT)) if p]))
        try:
            subprocess.run([sys.executable, __file__, "unsloth", *common, "--variants", a.variants,
                            "--profile", str(a.profile), "--out",
                            str(uns_out)], env=env_u,
                           check=False, timeout=a.unsloth_timeout)
        except subprocess.TimeoutExpired:
            print("unsloth run timed out", flush=True)
        if uns_out.exists():
            parts.append(json.loads(uns_out.read_text()))
    rep = report(parts, model_dir, a)
    name = f"train_speed-{rep['date']}-{_slug(rep['gpu'])}.json"
    for d in (outdir, RESULTS):
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(rep, indent=1))
    print_table(rep)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=["all", "make", "trl", "unsloth", "report", "runs"])
    p.add_argument("--parts", nargs="*", help="report: trl.json [unsloth.json] written by a run; runs: result "
                                                "files of several runs")
    p.add_argument("--gpu", help="report: GPU name, for parts written before it was recorded")
    p.add_argument("--date", help="report: the run's date (default: today)")
    p.add_argument("--size", default="8b", choices=sorted(SIZES))
    p.add_argument("--model", help="model folder (trl/unsloth)")
    p.add_argument("--model-dir", default="/tmp/train-speed-models")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per path")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    p.add_argument("--bs", type=int, default=4, help="SFT examples per step")
    p.add_argument("--dpo-bs", type=int, default=2, help="DPO pairs per step")
    p.add_argument("--maxlen", type=int, default=2048)
    p.add_argument("--variants", default="plain_sft,plain_dpo,fast_sft,fast_dpo")
    p.add_argument("--fast", action="append", metavar="KEY=VALUE",
                   help="a FastConfig switch for every fast path, e.g. --fast varlen_attention=false "
                        "--fast memory_budget=auto (repeatable; a variant's own overrides win)")
    p.add_argument("--out", default=str(RESULTS / "_run"))
    p.add_argument("--trl-site", default=None, help="PYTHONPATH entry holding trl 1.16 & co (GPU image)")
    p.add_argument("--unsloth-site", default=None, help="PYTHONPATH entry holding unsloth & its trl")
    p.add_argument("--no-unsloth", action="store_true")
    p.add_argument("--profile", type=int, default=0, help="profile this many steps after warm-up (trl paths)")
    p.add_argument("--pyprofile", action="store_true", help="with --profile: cProfile the host instead")
    p.add_argument("--profile-only", default=None, help="comma-separated paths to profile (default: all)")
    p.add_argument("--trl-timeout", type=int, default=480)
    p.add_argument("--unsloth-timeout", type=int, default=240)
    a = p.parse_args(argv)
    if a.cmd == "make":
        print(json.dumps(make_model(a.size, Path(a.model or Path(a.model_dir) / f"llama-{a.size}"))))
    elif a.cmd == "trl":
        cmd_trl(a)
    elif a.cmd == "unsloth":
        cmd_unsloth(a)
    elif a.cmd == "runs":
        print_runs(summarize_runs([json.loads(Path(x).read_text()) for x in a.parts], a.parts))
    elif a.cmd == "report":
        parts = [json.loads(Path(x).read_text()) for x in a.parts]
        rep = report(parts, None, a, gpu=a.gpu, n=model_params_of(SIZES[a.size])["n_flop_params"])
        if a.date:
            rep["date"] = a.date
        name = f"train_speed-{rep['date']}-{_slug(rep['gpu'])}.json"
        (RESULTS / name).write_text(json.dumps(rep, indent=1))
        print_table(rep)
    else:
        cmd_all(a)


if __name__ == "__main__":
    main()
