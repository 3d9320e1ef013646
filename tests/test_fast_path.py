"""orchard.align.fast computes what the plain path computes: same loss, same LoRA gradients, same log-probs.

Tiny random Llama (grouped-query attention, fp32, CPU) with a LoRA whose B matrices are non-zero, so that every
adapter gets a gradient. The padded batches have very different lengths, so padding is most of each batch.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchard.align import fast
from orchard.align.fast import attention, checkpointing, unpad

ROOT = Path(__file__).resolve().parent.parent


def _tiny_peft(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(LlamaForCausalLM(cfg), lora)


def _batch(lens, side="right", seed=1):
    g = torch.Generator().manual_seed(seed)
    t = max(lens)
    ids = torch.zeros(len(lens), t, dtype=torch.long)
    am = torch.zeros(len(lens), t, dtype=torch.long)
    for i, n in enumerate(lens):
        sl = slice(0, n) if side == "right" else slice(t - n, t)
        ids[i, sl] = torch.randint(3, 300, (n,), generator=g)
        am[i, sl] = 1
    labels = ids.masked_fill(am == 0, -100)
    if side == "left":
        # The first real token of a left-padded row would be "predicted" from a padding position: its target
        # is padding-dependent garbage on any path, so (like every trainer) leave it out of the loss.
        for i, n in enumerate(lens):
            labels[i, t - n] = -100
    return ids, am, labels


@pytest.fixture
def spy(monkeypatch):
    """Records the per-example lengths the packed attention used (proves the packed path ran)."""
    seen = []
    real = attention._segment_lengths

    def wrapped(total, kwargs):
        out = real(total, kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(attention, "_segment_lengths", wrapped)
    return seen


def _loss_and_grads(model, ids, am, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=am, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(plain, fast_):
    (l0, g0), (l1, g1) = plain, fast_
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) == 3 * 7 * 2  # 3 layers x 7 linears x (A, B)
    for k in g0:
        assert torch.allclose(g1[k], g0[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("side", ["right", "left"])
def test_sft_loss_and_lora_grads_match_plain(spy, side):
    plain = _tiny_peft()
    packed = copy.deepcopy(plain)
    assert unpad.enable(packed) and not unpad.enable(packed)  # idempotent
    ids, am, labels = _batch([37, 5, 60, 18], side)
    ref = _loss_and_grads(plain, ids, am, labels)
    got = _loss_and_grads(packed, ids, am, labels)
    _assert_same(ref, got)
    # every layer's attention ran on the four examples separately, no padding in the row
    assert spy and all(s == [37, 5, 60, 18] for s in spy)


def _checkpointed_pair():
    """The plain model and a padding-free copy, both with activation checkpointing on, in training mode."""
    plain = _tiny_peft()
    packed = copy.deepcopy(plain)
    unpad.enable(packed)
    for m in (plain, packed):
        m.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
        m.train()
    return plain, packed


def test_checkpointing_and_kept_layers_match_plain(spy):
    plain, packed = _checkpointed_pair()
    assert checkpointing.set_kept_layers(packed, 1) == 1
    layers = unpad.backbone(packed).layers
    assert [lay.gradient_checkpointing for lay in layers] == [True, True, False]
    ids, am, labels = _batch([12, 40, 3])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(packed, ids, am, labels))
    # forward (3 layers) + recompute of the 2 checkpointed layers, all packed
    assert len(spy) == 5 and all(s == [12, 40, 3] for s in spy)


def test_fused_logprob_head_used_by_dpo_matches(spy):
    """TRL's DPO scores chosen+rejected through a fused log-prob head; the unpadded backbone must not change it."""
    from trl.trainer.utils import add_fused_lm_head

    plain = _tiny_peft()
    add_fused_lm_head(plain.get_base_model())
    packed = copy.deepcopy(plain)
    unpad.enable(packed)
    ids, am, labels = _batch([20, 9, 33, 14])  # [chosen x2, rejected x2], as TRL lays them out
    outs = []
    for m in (plain, packed):
        m.zero_grad()
        o = m(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True, use_cache=False)
        logps = o.log_probs.sum(1)
        (-torch.nn.functional.logsigmoid(logps[:2] - logps[2:])).mean().backward()
        outs.append((o.log_probs.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
    assert outs[0][0].shape == outs[1][0].shape
    assert torch.allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for k in outs[0][1]:
        assert torch.allclose(outs[1][1][k], outs[0][1][k], rtol=1e-4, atol=1e-6), k
    assert spy


def test_generation_with_cache_is_unchanged():
    plain = _tiny_peft().eval()
    packed = copy.deepcopy(plain)
    unpad.enable(packed)
    ids, am, _ = _batch([6, 9], side="left")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(input_ids=ids, attention_mask=am, **kw),
                       packed.generate(input_ids=ids, attention_mask=am, **kw))
    assert unpad.disable(packed) and not unpad.disable(packed)
    assert unpad.backbone(packed).config._attn_implementation == "sdpa"


def test_decide_falls_back_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    auto = fast.decide("auto")
    assert not auto.enabled and "no CUDA GPU" in auto.reason
    assert fast.trainer_kwargs({"a": 1}, auto) == {"a": 1}
    on = fast.decide("on")
    assert on.enabled and on.unpad and on.fused_lora and not on.liger and on.keep_layers == 0
    assert not on.fold_accumulation  # needs a GPU memory budget
    assert not fast.decide("off").enabled
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        fast.decide("fast")


def _bench_paths(tmp_path, variants: str) -> dict:
    """Run benchmarks/train_speed.py's TRL paths on a tiny model (1 warm-up + 2 steps): results by path."""
    bench = ROOT / "benchmarks" / "train_speed.py"
    model = tmp_path / "llama-tiny"
    run = [sys.executable, str(bench)]
    subprocess.run(run + ["make", "--size", "tiny", "--model", str(model)], check=True, capture_output=True)
    out = tmp_path / "trl.json"
    subprocess.run(run + ["trl", "--model", str(model), "--steps", "2", "--warmup", "1", "--maxlen", "128",
                          "--variants", variants, "--out", str(out)], check=True, capture_output=True, timeout=600)
    return {r["path"]: r for r in json.loads(out.read_text())["results"]}


def test_trl_trainers_same_losses_through_benchmark(tmp_path):
    """SFTTrainer and DPOTrainer with fast.apply(): the logged losses of the first steps equal the plain path's."""
    res = _bench_paths(tmp_path, "plain_sft,fast_sft,plain_dpo,fast_dpo")
    assert all("error" not in r for r in res.values()), res
    assert res["fast_sft"]["applied"]["padding_free"] is True
    assert res["fast_sft"]["applied"]["fused_lora_layers"] == 4 * 7  # tiny model: 4 layers x 7 linears
    for stage in ("sft", "dpo"):
        p, f = res[f"plain_{stage}"]["losses"], res[f"fast_{stage}"]["losses"]
        assert len(p) == len(f) == 3
        assert f == pytest.approx(p, abs=1e-4)
        assert res[f"fast_{stage}"]["tokens_timed"] == res[f"plain_{stage}"]["tokens_timed"]  # same batches
        # the first step's gradient norm too: a gradient that does not flow leaves step 1's loss unchanged
        g_p, g_f = res[f"plain_{stage}"]["first_step"]["grad_norm"], res[f"fast_{stage}"]["first_step"]["grad_norm"]
        assert g_f == pytest.approx(g_p, rel=1e-3)


def test_folded_accumulation_takes_the_same_optimizer_steps(tmp_path):
    """2 micro batches of 4 accumulated (plain TRL) vs the fast path's one micro batch of 8: same examples per
    optimizer step, same logged losses step after step (TRL normalises an accumulated step over all of it)."""
    res = _bench_paths(tmp_path, "plain_sft_ga2,fast_sft_ga2_fold,plain_dpo_ga2,fast_dpo_ga2_fold")
    assert all("error" not in r for r in res.values()), res
    for stage, bs in (("sft", 4), ("dpo", 2)):
        p, f = res[f"plain_{stage}_ga2"], res[f"fast_{stage}_ga2_fold"]
        assert (p["batch_size"], p["grad_accum"]) == (bs, 2)
        assert (f["batch_size"], f["grad_accum"]) == (2 * bs, 1)  # folded
        assert "folded" in " ".join(f["applied"]["notes"])
        assert len(p["losses"]) == len(f["losses"]) == 3
        assert f["losses"] == pytest.approx(p["losses"], abs=1e-4)
        assert f["tokens_timed"] == p["tokens_timed"]  # the same examples


def test_fused_lora_matches_peft():
    from orchard.align.fast import lora

    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    assert lora.enable(fused) == 3 * 7 and lora.enable(fused) == 0  # idempotent
    ids, am, labels = _batch([30, 7, 19])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    # with padding-free attention too
    unpad.enable(fused)
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    # deepcopy keeps the fused class bound to the copy; adapters disabled (DPO's reference) = the base model
    twin = copy.deepcopy(fused)
    real = am.bool()  # padding positions differ by design (padding-free: zeros there)
    with torch.no_grad(), fused.disable_adapter(), plain.disable_adapter():
        assert torch.allclose(fused(input_ids=ids, attention_mask=am).logits[real],
                              plain(input_ids=ids, attention_mask=am).logits[real], atol=1e-5)
        base_logits = fused(input_ids=ids, attention_mask=am).logits[real]
    with torch.no_grad():  # and enabled again: the adapters count (their B matrices are not zero)
        assert not torch.allclose(fused(input_ids=ids, attention_mask=am).logits[real], base_logits, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(twin(input_ids=ids, attention_mask=am).logits,
                              fused(input_ids=ids, attention_mask=am).logits)
    assert lora.disable(fused) == 21 and type(lora.lora_layers(fused)[0]).__name__ == "Linear"


def test_fold_factor_fits_the_budget():
    from orchard.align.fast import plan as fplan

    model = _tiny_peft()
    assert fplan.fold_factor(model, 2, 4, 128, budget_gib=100.0) == 4
    assert fplan.fold_factor(model, 2, 6, 128, budget_gib=100.0) == 6
    assert fplan.fold_factor(model, 2, 4, 128, budget_gib=1.0) == 1  # budget all margin: nothing folds
    # 8B-shaped numbers: 5.7 GiB of weights, 16 GiB budget: 4 x 2,048 tokens fold twice, not four times
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32)
    per_tok = 2 * 4096 * 32 + checkpointing.layer_bytes_per_token(cfg)
    room = 15 * 2**30 - 5.7 * 2**30
    assert 8 * 2048 * per_tok <= room < 16 * 2048 * per_tok
    plan = fast.decide("on")
    plan.fold_accumulation = True
    kw = fast.trainer_kwargs({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}, plan,
                             model=model, tokens_per_example=128)
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (8, 1)
    plan.fold_accumulation = False
    kw = fast.trainer_kwargs({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}, plan,
                             model=model)
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (2, 4)


def test_kept_layers_survive_checkpointing_reenabled():
    """TRL's DPO turns checkpointing off and on around every reference forward; kept layers must stay kept."""
    model = _tiny_peft()
    base = model.get_base_model()
    base.gradient_checkpointing_enable({"use_reentrant": False})
    assert checkpointing.set_kept_layers(model, 2) == 2
    base.gradient_checkpointing_disable()
    base.gradient_checkpointing_enable({"use_reentrant": False})
    layers = unpad.backbone(model).layers
    assert [lay.gradient_checkpointing for lay in layers] == [True, False, False]
    assert checkpointing.reset_kept_layers(model) == 2
    assert type(layers[2]).__name__ == "LlamaDecoderLayer"


def test_auto_keep_fits_the_budget():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32)
    per_layer = checkpointing.layer_bytes_per_token(cfg) * 8192 / 2**30  # 4 x 2,048 tokens: ~1.1 GiB
    assert 1.05 < per_layer < 1.15  # measured on an H100: ~0.81 GiB per layer at batches of <= ~7k tokens
    # 9 GiB measured after step 1, 16 GiB budget, 1 GiB margin: room for 6 GiB -> 5 layers of 1.1 GiB
    assert checkpointing.auto_keep(16.0, 9.0, 8192, cfg, 32) == 5
    assert checkpointing.auto_keep(16.0, 15.5, 8192, cfg, 32) == 0
    assert checkpointing.auto_keep(1000.0, 9.0, 8192, cfg, 32) == 32


def test_token_budget_keeps_more_layers_for_shorter_batches():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32)
    per_layer = checkpointing.layer_bytes_per_token(cfg)
    # 8B-like: 5.7 GiB of weights, 0.4 MB per token with every layer checkpointed, 16 GiB budget, 1 GiB margin
    tb = checkpointing.TokenBudget(16.0, int(5.7 * 2**30), 0.4e6, cfg, 32)
    ks = {t: tb.keep_for(t) for t in (1000, 4600, 8192, 16384, 40000)}
    assert ks[1000] == 32 and ks[40000] == 0
    assert ks[1000] >= ks[4600] > ks[8192] > ks[16384]
    for t, k in ks.items():  # the modelled peak stays within budget - margin
        assert 5.7 * 2**30 + 0.4e6 * t + k * per_layer * t <= 15 * 2**30 or k == 0
    assert tb.seen == {32: 1, ks[4600]: 1, ks[8192]: 1, ks[16384]: 1, 0: 1}
    # a step whose measured peak went over the budget raises the per-layer estimate: fewer layers afterwards
    assert not tb.observe(15 * 2**30)  # under budget: nothing to correct
    k = tb.keep_for(4600)
    assert tb.observe(17 * 2**30) and tb.corrections == 1
    assert tb.keep_for(4600) < k
    # an fp32 residual stream (prepare_model_for_kbit_training upcasts the embeddings) costs more per layer
    assert checkpointing.layer_bytes_per_token(cfg, 4) > 1.35 * per_layer


def test_kept_layers_follow_each_batch_and_math_is_unchanged(spy):
    plain, packed = _checkpointed_pair()
    inner = unpad.backbone(packed)
    asked = []

    def keep_for(tokens):  # long batches keep fewer layers
        asked.append(tokens)
        return 3 if tokens < 50 else 1

    inner.__dict__["_orchard_keep_for"] = keep_for
    inner.__dict__["_orchard_tokens_max"] = 0
    for lens, kept in (([12, 20, 3], [False, False, False]), ([40, 33], [True, True, False])):
        ids, am, labels = _batch(lens)
        _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(packed, ids, am, labels))
        assert [lay.gradient_checkpointing for lay in inner.layers] == kept
    assert asked == [35, 73] and inner.__dict__["_orchard_tokens_max"] == 73
    with torch.no_grad():  # reference forwards (no gradients) leave the choice alone
        packed(input_ids=ids[:, :5], attention_mask=am[:, :5])
    assert asked == [35, 73]


def _pairs(prompt_lens, chosen_lens, rejected_lens, seed=3):
    """A right-padded [chosen; rejected] batch as TRL's DPO collator builds it: each row prompt + completion."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    prompts = [torch.randint(3, 300, (p,), generator=g) for p in prompt_lens]
    for comp_lens in (chosen_lens, rejected_lens):
        for pr, n in zip(prompts, comp_lens):
            rows.append((pr, torch.randint(3, 300, (n,), generator=g)))
    t = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    am = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.cat([p, c])
        am[i, :n] = 1
        labels[i, len(p):n] = ids[i, len(p):n]
    return ids, am, labels


def test_shared_prefix_plan_layout():
    from orchard.align.fast import prefix

    ids, am, _ = _pairs([5, 9], [3, 4], [6, 2])
    pp = prefix.plan(ids, am)
    # pair 0: prompt 5 + chosen 3 whole, then rejected's 6 own tokens (its prompt shared); pair 1: 9 + 4, then 2
    assert pp.lens_q == (8, 6, 13, 2) and pp.lens_k == (8, 11, 13, 11)
    assert pp.shared == 5 + 9 and pp.gather.numel() == sum(pp.lens_q) == 29
    assert pp.src.numel() == int(am.sum())
    # the packed row holds exactly the tokens the padded rows hold, the shared prompts once
    packed = ids.reshape(-1)[pp.gather]
    assert torch.equal(packed[pp.src], ids[am.bool()])
    # not a pair batch: odd rows, left padding, nothing shared
    assert prefix.plan(ids[:3], am[:3]) is None
    assert prefix.plan(ids.flip(1), am.flip(1)) is None
    assert prefix.plan(*_batch([20, 9, 33, 14])[:2]) is None


def test_shared_prefix_dpo_logps_and_grads_match(spy):
    """TRL's fused log-prob head over a DPO batch whose pairs share prompts: the same log-probs and LoRA
    gradients with each prompt computed once (including the reference forward, without gradients)."""
    from trl.trainer.utils import add_fused_lm_head

    from orchard.align.fast import lora

    plain = _tiny_peft()
    add_fused_lm_head(plain.get_base_model())
    packed = copy.deepcopy(plain)
    unpad.enable(packed)
    lora.enable(packed)
    unpad.backbone(packed).__dict__["_orchard_share_prefix"] = True
    ids, am, labels = _pairs([30, 12, 41], [9, 25, 4], [17, 3, 22])
    outs = []
    for m in (plain, packed):
        m.zero_grad()
        with torch.no_grad(), m.disable_adapter():
            ref = m(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True, use_cache=False)
        o = m(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True, use_cache=False)
        logps = o.log_probs.sum(1)
        ref_logps = ref.log_probs.sum(1)
        d = (logps[:3] - ref_logps[:3]) - (logps[3:] - ref_logps[3:])
        (-torch.nn.functional.logsigmoid(0.1 * d)).mean().backward()
        outs.append((o.log_probs.detach(), ref.log_probs, {n: p.grad.clone() for n, p in m.named_parameters()
                                                          if p.requires_grad}))
    assert torch.allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-5)
    for k in outs[0][2]:
        assert torch.allclose(outs[1][2][k], outs[0][2][k], rtol=1e-4, atol=1e-6), k
    assert spy == []  # the shared-prefix attention ran, not the per-example one


def test_fused_layers_match_plain(spy, monkeypatch):
    """The hand-fused decoder layer (one autograd node per group of linears): same loss and LoRA gradients, with
    activation checkpointing and kept layers too; adapters disabled (DPO's reference) is the base model."""
    from orchard.align.fast import layer

    groups, skips = [], []
    real_linear, real_tail = layer._linear, layer._mlp_tail
    monkeypatch.setattr(layer, "_linear", lambda g, *a, **k: groups.append(len(g.linears)) or real_linear(g, *a, **k))

    def tail(act, g, *a, skip_output=False, **k):
        groups.append(len(g.linears))
        skips.append(skip_output)
        return real_tail(act, g, *a, skip_output=skip_output, **k)

    monkeypatch.setattr(layer, "_mlp_tail", tail)
    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    assert layer.enable(fused) == 3 and layer.enable(fused) == 0
    ids, am, labels = _batch([30, 7, 19, 44])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    assert spy and all(s == [30, 7, 19, 44] for s in spy)
    assert groups == [3, 1, 2, 1] * 3  # the fused forward ran: q/k/v, o, gate/up, down in each of 3 layers
    # a second step after an optimizer update: the cached adapter casts follow the new weights
    for m in (plain, fused):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        _loss_and_grads(m, ids, am, labels)
        opt.step()
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    real = am.bool()
    with torch.no_grad(), fused.disable_adapter(), plain.disable_adapter():
        assert torch.allclose(fused(input_ids=ids, attention_mask=am).logits[real],
                              plain(input_ids=ids, attention_mask=am).logits[real], atol=1e-5)
    for m in (plain, fused):
        m.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
        m.train()
    checkpointing.set_kept_layers(fused, 1)
    skips.clear()
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    # 3 layers forward, then the 2 checkpointed ones recomputed without their (unused) down projection output
    assert skips == [False, False, False, True, True]
    assert layer.disable(fused) == 3 and layer.disable(fused) == 0
    assert [getattr(x, "_orchard_kept", False) for x in unpad.backbone(fused).layers] == [False, False, True]
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))


def test_fused_layers_under_bf16_autocast_follow_the_plain_path():
    """Under autocast (the Trainer's bf16 mode) the fused layer computes in bf16 and returns fp32 gradients for
    the fp32 adapters; loss and gradients agree with the plain path to bf16 rounding."""
    from orchard.align.fast import layer

    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    layer.enable(fused)
    ids, am, labels = _batch([30, 7, 19])
    res = []
    for m in (plain, fused):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=ids, attention_mask=am, labels=labels).loss
        loss.backward()
        res.append((loss.item(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    assert res[1][0] == pytest.approx(res[0][0], rel=2e-2)
    for k, g in res[0][1].items():
        got = res[1][1][k]
        assert got.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(got.flatten(), g.flatten(), dim=0) > 0.98, k


def test_lean_adapter_switch_is_peft_disable_adapter():
    """fast.host's disable_adapter (DPO's reference forward) gives PEFT's base-model outputs, restores the
    adapters afterwards (nested too), and leaves PEFT's own switch where it is not plain LoRA."""
    from orchard.align.fast import host

    plain = _tiny_peft()
    lean = copy.deepcopy(plain)
    assert host.lean_adapter_switch(lean) and host.lean_adapter_switch(lean)
    ids, am, _ = _batch([12, 5])
    with torch.no_grad():
        with plain.disable_adapter():
            ref = plain(input_ids=ids, attention_mask=am).logits
        with lean.disable_adapter():
            got = lean(input_ids=ids, attention_mask=am).logits
            with lean.disable_adapter():  # nested: still off
                assert torch.equal(lean(input_ids=ids, attention_mask=am).logits, got)
            assert torch.equal(lean(input_ids=ids, attention_mask=am).logits, got)
        assert torch.equal(got, ref)
        on = lean(input_ids=ids, attention_mask=am).logits
        assert torch.allclose(on, plain(input_ids=ids, attention_mask=am).logits)
        assert not torch.allclose(on, got, atol=1e-3)  # the adapters are back
    assert not lean._adapters_disabled
    assert host.memoize_parameter_count(lean) and lean.get_base_model().num_parameters() == \
        plain.get_base_model().num_parameters()
    host.restore(lean)
    assert "disable_adapter" not in lean.__dict__
    assert not host.lean_adapter_switch(torch.nn.Linear(2, 2))


def test_lean_step_walks_keep_the_trainer_semantics():
    """fast.host's train()/zero_grad()/clipping: same modes, same cleared gradients, same clipped norm."""
    from types import SimpleNamespace

    from orchard.align.fast import host

    model = _tiny_peft()
    ids, am, labels = _batch([12, 5])
    model(input_ids=ids, attention_mask=am, labels=labels).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable]))
    assert want > 0.5  # so that clipping changes the gradients

    class _Trainer:
        def _clip_grad_norm(self, m):
            raise AssertionError("the lean clipping should have run")

    tr = _Trainer()
    tr.model, tr.args = model, SimpleNamespace(max_grad_norm=0.5, fp16=False)
    tr.accelerator = SimpleNamespace(distributed_type=SimpleNamespace(value="NO"), num_processes=1)
    assert host.lean_step_walks(tr) == ["train", "zero_grad", "clip_grad_norm"]
    got = tr._clip_grad_norm(model)
    assert torch.allclose(got, want)
    assert all(p.grad.norm() <= 0.5 + 1e-4 for p in trainable)
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    unpad.backbone(model).layers[1].eval()  # a layer switched on its own: the lean train() still walks
    model.train()
    assert all(m.training for m in model.modules())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    host.restore(model, tr)
    assert "train" not in model.__dict__ and "_clip_grad_norm" not in tr.__dict__


def test_lean_checkpointing_switch_flips_the_same_flags():
    from orchard.align.fast import host

    model = _tiny_peft()
    cls = type(model)
    assert host.lean_checkpointing_switch(model) and host.lean_checkpointing_switch(model)
    layers = unpad.backbone(model).layers
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable({"use_reentrant": False})  # the first enable takes the full path
    assert model.is_gradient_checkpointing and all(x.gradient_checkpointing for x in layers)
    checkpointing.set_kept_layers(model, 1)  # a kept layer keeps reading False through the switch
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing and not any(x.gradient_checkpointing for x in layers)
    model.gradient_checkpointing_enable({"use_reentrant": False})  # lean: flags only
    assert [x.gradient_checkpointing for x in layers] == [True, True, False]
    checkpointing.reset_kept_layers(model)
    assert all(x.gradient_checkpointing for x in layers)
    plain = _tiny_peft()
    plain.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
    model.train(), plain.train()
    ids, am, labels = _batch([9, 21])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(model, ids, am, labels))
    host.restore(model)
    assert type(model) is cls


def test_fused_layers_with_biases_and_fallbacks(monkeypatch):
    """Qwen2-style layers (q/k/v biases) take the fused forward with the same loss and gradients; a LoRA with
    dropout in eval mode takes it too (dropout inactive); DoRA, which the fused forward does not cover, runs the
    layer's own forward and is still right."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from orchard.align.fast import layer

    def qwen(dropout: float, dora: bool = False):
        torch.manual_seed(0)
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
        cfg._attn_implementation = "sdpa"
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout,
                          init_lora_weights=False, use_dora=dora)
        return get_peft_model(Qwen2ForCausalLM(cfg), lora)

    ran = []
    real = layer._linear
    monkeypatch.setattr(layer, "_linear", lambda g, *a, **k: ran.append(1) or real(g, *a, **k))
    plain = qwen(0.0)
    assert unpad.backbone(plain).layers[0].self_attn.q_proj.base_layer.bias is not None
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    assert layer.enable(fused) == 2
    ids, am, labels = _batch([20, 6, 31])
    l0, g0 = _loss_and_grads(plain, ids, am, labels)
    l1, g1 = _loss_and_grads(fused, ids, am, labels)
    assert ran and l1 == pytest.approx(l0, rel=1e-5)
    for k in g0:
        assert torch.allclose(g1[k], g0[k], rtol=1e-4, atol=1e-6), k
    for kind, model in (("dropout, eval", qwen(0.1).eval()), ("dora", qwen(0.0, dora=True))):
        ran.clear()
        ref = copy.deepcopy(model)
        unpad.enable(model)
        layer.enable(model)
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=am).logits[am.bool()]
            want = ref(input_ids=ids, attention_mask=am).logits[am.bool()]
        assert bool(ran) == (kind != "dora"), kind  # DoRA fell back to the layer's own forward
        assert layer.covers(unpad.backbone(model).layers[0]) == (kind != "dora")
        assert torch.allclose(got, want, atol=1e-5), kind


def test_kept_layer_planner_leaves_the_cuda_peak_counter_alone(monkeypatch):
    """The per-batch planner checks a step against the budget only when it set a new peak, and never resets the
    CUDA peak counter (the stages' and users' own peak readings depend on it)."""
    cfg = _tiny_peft().get_base_model().config
    cb = checkpointing.PartialCheckpointing("auto", budget_gib=16.0)
    cb.budget = checkpointing.TokenBudget(16.0, 5 * 2**30, 200_000, cfg, 3)
    cb.budget.keep_for(4000)
    cb.seen_peak = 12 * 2**30
    peak = [15 * 2**30]
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: peak[0])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda *a, **k: pytest.fail("the planner reset the CUDA peak counter"))
    step = type("S", (), {"global_step": 2})()
    cb.on_step_end(None, step, None)
    assert cb.budget.corrections == 0 and cb.seen_peak == 15 * 2**30
    peak[0] = 17 * 2**30  # a new peak over the budget: corrected once
    cb.on_step_end(None, step, None)
    cb.on_step_end(None, step, None)  # the same peak again: that step set nothing new
    assert cb.budget.corrections == 1


def test_fused_layer_keeps_two_intermediate_tensors():
    """A layer out of checkpointing stores gate and up but not their activation product (recomputed in the
    backward): two intermediate-sized tensors per layer, the kept-layer planner's estimate for fused layers."""
    from orchard.align.fast import layer

    def intermediate_saved(model):
        seen = set()

        def pack(t):
            if t.dim() and t.shape[-1] == 128:  # the tiny model's intermediate size
                seen.add((t.data_ptr(), tuple(t.shape)))
            return t

        ids, am, labels = _batch([30, 7, 19])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=am, labels=labels).loss
        return len(seen)

    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    layer.enable(fused)
    assert intermediate_saved(fused) == 2 * 3
    assert intermediate_saved(plain) >= 3 * 3
    assert checkpointing.intermediates_kept(unpad.backbone(fused)) == 2
    assert checkpointing.intermediates_kept(unpad.backbone(plain)) == 3


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_activation_backward_matches_autograd(act):
    """The MLP tail's activation backward (the SiLU formula, or autograd for another activation) equals
    autograd's gradients of act(g) * u."""
    from types import SimpleNamespace

    from orchard.align.fast import layer

    fn = torch.nn.SiLU() if act == "silu" else torch.nn.GELU()
    fwd, bwd = layer._activation_pair(SimpleNamespace(act_fn=fn))
    g, u, d = (torch.randn(5, 7, dtype=torch.float64) for _ in range(3))
    g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
    want = torch.autograd.grad(fn(g1) * u1, (g1, u1), d)
    assert torch.allclose(fwd(g, u), fn(g) * u)
    got = bwd(g.clone(), u.clone(), d)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("tail", [False, True])
def test_fused_layers_with_a_raw_activation_kernel_match_plain(spy, monkeypatch, tail):
    """The activation pair's forward is a raw kernel on CUDA (Liger's, outside autograd); with it, both MLP forms
    must still pass the gradient to gate and up. (A GPU benchmark once ran the MLP tail off with the raw
    kernel's output fed to the down projection: no gradient reached gate/up, and only the loss was checked.)
    mlp_tail False (``fast.mlp_tail: false``): the down projection as a plain group over the kept product."""
    from orchard.align.fast import layer

    real_pair = layer._activation_pair

    def raw(mlp):
        fwd, bwd = real_pair(mlp)

        def fwd_raw(g, u):
            with torch.no_grad():
                return fwd(g, u)

        return fwd_raw, bwd

    monkeypatch.setattr(layer, "_activation_pair", raw)
    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    assert layer.enable(fused, mlp_tail=tail) == 3
    assert checkpointing.intermediates_kept(unpad.backbone(fused)) == (2 if tail else 3)
    ids, am, labels = _batch([30, 7, 19, 44])
    for m in (plain, fused):
        m.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
        m.train()
    checkpointing.set_kept_layers(fused, 1)
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))


def test_reentrant_checkpointing_never_skips_the_down_projection(spy, monkeypatch):
    """Reentrant checkpointing backpropagates through the recomputed output, so the recomputation must compute
    it: same loss and gradients as the plain path, no skipped output."""
    from orchard.align.fast import layer

    skips = []
    real_tail = layer._mlp_tail
    monkeypatch.setattr(layer, "_mlp_tail", lambda *a, skip_output=False, **k: skips.append(skip_output)
                        or real_tail(*a, skip_output=skip_output, **k))
    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    unpad.enable(fused)
    layer.enable(fused)
    for m in (plain, fused):
        m.get_base_model().gradient_checkpointing_enable({"use_reentrant": True})
        m.get_base_model().enable_input_require_grads()
        m.train()
    ids, am, labels = _batch([30, 7, 19, 44])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    assert skips == [False] * 6  # 3 layers forward, 3 recomputed


class _SeededDropout(torch.nn.Module):
    """PEFT's LoRA dropout with its masks drawn like the fused layers draw theirs (one seed per call, in order)."""

    def __init__(self, p, seeds):
        super().__init__()
        self.p, self.seeds = p, seeds

    def forward(self, x):
        from orchard.align.fast import layer

        flat = x.reshape(-1, x.shape[-1])
        m = layer._mask(next(self.seeds), flat.shape, self.p, x.device, x.dtype)
        return (flat * m * (1.0 / (1.0 - self.p))).view(x.shape)


def test_fused_layers_apply_lora_dropout_like_peft(monkeypatch):
    """LoRA dropout (the recipes' default 0.05) runs in the fused layers instead of falling back: each adapter's
    input dropped with its own mask, the mask drawn again from its seed in the backward. With PEFT's dropout
    drawing the same masks, loss and every LoRA gradient are PEFT's."""
    import itertools

    from peft.tuners.lora import LoraLayer

    from orchard.align.fast import layer

    def model(p):
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
        cfg._attn_implementation = "sdpa"
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=p, init_lora_weights=False)
        return get_peft_model(LlamaForCausalLM(cfg), lora)

    ref = model(0.2)
    fused = copy.deepcopy(ref)
    seeds = itertools.count(1000)
    for m in ref.modules():
        if isinstance(m, LoraLayer):
            m.lora_dropout["default"] = _SeededDropout(0.2, seeds)
    unpad.enable(ref)  # padding-free, PEFT's own layers
    unpad.enable(fused)
    assert layer.enable(fused) == 3
    calls = []
    fused_seeds = itertools.count(1000)
    monkeypatch.setattr(layer, "_seed", lambda: calls.append(1) or next(fused_seeds))
    ids, am, labels = _batch([30, 7, 19, 44])
    for m in (ref, fused):
        m.train()
    _assert_same(_loss_and_grads(ref, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    assert len(calls) == 3 * 7  # the fused path ran, one mask per adapter
    # and dropout is on: another seed sequence gives another loss
    fused_seeds = itertools.count(5000)
    assert _loss_and_grads(fused, ids, am, labels)[0] != pytest.approx(_loss_and_grads(ref, ids, am, labels)[0],
                                                                       rel=1e-6)


def test_lora_dropout_masks_survive_checkpoint_recomputation():
    """A checkpointed layer's recomputation draws the same masks as its forward (the RNG state is restored):
    the same loss and gradients with and without activation checkpointing, from the same torch seed."""
    from orchard.align.fast import layer

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.2, init_lora_weights=False)
    a = get_peft_model(LlamaForCausalLM(cfg), lora)
    b = copy.deepcopy(a)
    for m in (a, b):
        unpad.enable(m)
        layer.enable(m)
        m.train()
    b.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
    checkpointing.set_kept_layers(b, 1)
    ids, am, labels = _batch([30, 7, 19, 44])
    res = []
    for m in (a, b):
        torch.manual_seed(123)
        res.append(_loss_and_grads(m, ids, am, labels))
    _assert_same(*res)


def test_fused_layers_when_a_kernel_patch_removed_act_fn(spy):
    """Liger's SwiGLU patch (TRL's use_liger_kernel) leaves the MLP's ``act_fn`` None: the fused layer then takes
    the activation from the config (a GPU DPO stage crashed on it); an unknown one is not fused."""
    from orchard.align.fast import layer

    plain = _tiny_peft()
    fused = copy.deepcopy(plain)
    for lay in unpad.backbone(fused).layers:
        lay.mlp.act_fn = None
    unpad.enable(fused)
    assert layer.enable(fused) == 3
    ids, am, labels = _batch([30, 7, 19, 44])
    _assert_same(_loss_and_grads(plain, ids, am, labels), _loss_and_grads(fused, ids, am, labels))
    other = copy.deepcopy(plain)
    for lay in unpad.backbone(other).layers:
        lay.mlp.act_fn = None
        lay.mlp.config.hidden_act = "something-else"
    assert layer.enable(other) == 0


def test_benchmark_summarizes_ratios_across_runs():
    """``train_speed.py runs``: each run's ratio to the plain path (mean and median step) and their medians."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_speed

    def rep(plain_s, fast_s):
        base = {"stage": "sft", "examples_per_step": 4, "batch_size": 4}
        return {"results": [
            dict(base, path="plain_sft", tool="trl", useful_tokens_per_s=100 / plain_s,
                 useful_tokens_per_s_median=100 / plain_s, step_s_median=plain_s),
            dict(base, path="fast_sft", tool="orchard", useful_tokens_per_s=100 / fast_s,
                 useful_tokens_per_s_median=100 / fast_s, step_s_median=fast_s, plain_same_step="plain_sft",
                 x_plain_same_step=round(plain_s / fast_s, 3))]}

    rows = train_speed.summarize_runs([rep(1.3, 0.45), rep(1.4, 0.45), rep(1.2, 0.45)], ["a", "b", "c"])
    r = rows["fast_sft"]
    assert r["x_plain"] == [2.889, 3.111, 2.667] and r["x_plain_median_of_runs"] == 2.889
    assert r["x_plain_median_step_median_of_runs"] == pytest.approx(2.889, abs=1e-3)


def test_fused_layers_stay_off_where_parameters_are_sharded():
    """FSDP and DeepSpeed gather parameters behind the modules: the hand-fused layers, which read the 4-bit bytes
    directly, are not enabled under them (DDP and one process keep them)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from orchard.align.fast import plan

    def trainer(kind):
        return SimpleNamespace(accelerator=SimpleNamespace(distributed_type=kind))

    assert "FSDP" in plan._shards_parameters(trainer(DistributedType.FSDP))
    assert "DEEPSPEED" in plan._shards_parameters(trainer(DistributedType.DEEPSPEED))
    assert plan._shards_parameters(trainer(DistributedType.MULTI_GPU)) is None
    assert plan._shards_parameters(trainer(DistributedType.NO)) is None


# ---------------------------------------------------------------- the config, the version check, scoped hooks


def test_unknown_library_version_falls_back_with_the_reason(monkeypatch, caplog):
    """An untested torch version: the plan is the plain path, the reason names the version and the known range,
    the console gets one line, and what apply() reports (metrics.json's fast_path entry) carries it."""
    from types import SimpleNamespace

    from orchard.align.fast import compat

    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version", lambda d: "2.99.0" if d == "torch" else real(d))
    with caplog.at_level("WARNING", logger="orchard.align.fast.plan"):
        plan = fast.decide("on")
    assert not plan.enabled
    assert "torch 2.99.0" in plan.reason and ">=2.11, <2.14" in plan.reason and "plain TRL path" in plan.reason
    assert [r.getMessage() for r in caplog.records] == [plan.reason]
    assert fast.apply(SimpleNamespace(), plan) == {"fast_path": False, "reason": plan.reason}
    monkeypatch.setattr(compat, "installed_version", lambda d: "0.45.0" if d == "bitsandbytes" else real(d))
    assert "bitsandbytes 0.45.0" in fast.decide("on").reason
    monkeypatch.setattr(compat, "installed_version", lambda d: None if d == "bitsandbytes" else real(d))
    assert fast.decide("on").enabled  # bitsandbytes is optional (non-quantized LoRA)
    monkeypatch.setattr(compat, "installed_version", lambda d: "1.17.0" if d == "trl" else real(d))
    assert "trl 1.17.0" in fast.decide("on").reason


def test_missing_private_attribute_falls_back_with_the_reason(monkeypatch):
    import transformers

    assert fast.decide("on").enabled
    monkeypatch.delattr(transformers.Trainer, "_clip_grad_norm")
    plan = fast.decide("on")
    assert not plan.enabled and "transformers.Trainer._clip_grad_norm is missing" in plan.reason


def test_fast_config_switches_reach_the_plan():
    from orchard.align.config import DPOFastConfig, FastConfig
    from orchard.align.fast import plan as fplan

    p = fast.decide(DPOFastConfig(mode="on", varlen_attention=False, fused_layers=False, mlp_tail=False,
                                  direct_dequant=False, shared_prefix=False, memory_budget=24))
    assert (p.varlen_attention, p.fused_layers, p.mlp_tail, p.direct_dequant, p.shared_prefix) == (False,) * 5
    assert p.memory_budget_gib == 24.0
    on = fast.decide(DPOFastConfig(mode="on"))
    assert on.varlen_attention and on.fused_layers and on.mlp_tail and on.direct_dequant and on.shared_prefix
    assert not fast.decide(FastConfig(mode="on")).shared_prefix  # SFT: nothing to share
    assert fast.decide(FastConfig(mode="on")).memory_budget_gib == FastConfig().memory_budget == 16.0
    # memory_budget auto: no GPU planning on CPU; on a GPU what is free plus what this process holds, less a margin
    assert fast.decide(FastConfig(mode="on", memory_budget="auto")).memory_budget_gib is None
    gib = 2**30
    assert fplan.auto_budget_gib(60 * gib, 80 * gib, 6 * gib) == pytest.approx(66 - 2 - 0.05 * 80)
    assert fplan.auto_budget_gib(0, 80 * gib, 0) == 1.0
    # YAML reads a bare off as False
    assert FastConfig(mode=False).mode == "off" and FastConfig(mode=True).mode == "on"


def test_varlen_switch_is_passed_with_the_forward(monkeypatch):
    """unpad.enable's varlen_attention reaches the attention as a keyword of each forward (no module flag)."""
    seen = []
    real = attention.packed_attention

    def spy(*a, **k):
        seen.append(k.get(attention.VARLEN_KEY))
        return real(*a, **k)

    monkeypatch.setattr(attention, "packed_attention", spy)  # what enable() registers with transformers
    model = _tiny_peft()
    unpad.enable(model, varlen_attention=False)
    try:
        ids, am, _ = _batch([7, 3])
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am)
        assert seen and set(seen) == {False}
        seen.clear()
        assert not unpad.enable(model, varlen_attention=True)  # already patched: the switch is updated
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am)
        assert set(seen) == {True}
    finally:
        from transformers import AttentionInterface

        AttentionInterface.register(attention.ATTN_NAME, real)


def test_step_counter_hook_is_scoped_to_fused_layers():
    """The fused layers' cast cache counts optimizer steps through torch's process-wide hook: installed once a
    fused layer caches a cast, counting steps, and released by disable()."""
    import gc

    from orchard.align.fast import layer

    gc.collect()
    model = _tiny_peft()
    unpad.enable(model)
    layer.enable(model)
    ids, am, labels = _batch([9, 4])
    _loss_and_grads(model, ids, am, labels)
    assert layer._STEPS.installed
    before = layer._STEPS.count
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert layer._STEPS.count == before + 1
    owners = [g.owner for lay in unpad.backbone(model).layers for g in layer._groups(lay)]
    assert layer.disable(model) == 3
    assert not any(o in layer._STEPS._holders for o in owners)
    assert not any(k.startswith("_orchard_ab_") for o in owners for k in o.__dict__)
    gc.collect()
    assert layer._STEPS.installed == any(True for _ in layer._STEPS._holders)
