"""GEMM and dequantization costs of one 8B decoder layer's shapes at the benchmark's token counts (GPU only).

For each projection (q, k/v, fused q/k/v, o, gate, fused gate/up, down) at 4,608 and 9,216 tokens: bf16
forward and input-gradient products (ms, TFLOP/s), the same forward in fp8 with row-wise scales (with and without
quantizing the input), bitsandbytes' NF4 dequantization and its 4-bit matmul; then the 8192^3 bf16 and fp8
rates. Tells how close the fast path's GEMMs run to the card, and what fp8 would give.

    python3 benchmarks/gemm_shapes.py          # writes $OUT/gemm.json (or /tmp/gemm.json)
"""
import json, sys, time, os
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F

out = {}
dev = "cuda"
def bench(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

H, I = 4096, 14336
shapes = {"q": (4096, H), "kv": (1024, H), "qkv": (6144, H), "o": (H, 4096), "gate": (I, H), "gateup": (2 * I, H), "down": (H, I)}
for T in (4608, 9216):
    x = {}
    res = {}
    for name, (N, K) in shapes.items():
        W = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
        X = torch.randn(T, K, device=dev, dtype=torch.bfloat16)
        G = torch.randn(T, N, device=dev, dtype=torch.bfloat16)
        fl = 2 * T * N * K
        f = bench(lambda: torch.nn.functional.linear(X, W))
        b = bench(lambda: G @ W)
        r = {"fwd_ms": round(f, 3), "bwd_ms": round(b, 3), "fwd_tflops": round(fl / f / 1e9, 1), "bwd_tflops": round(fl / b / 1e9, 1)}
        # fp8 rowwise
        try:
            Wf = W.to(torch.float8_e4m3fn)
            Xf = X.to(torch.float8_e4m3fn)
            sx = torch.ones(T, 1, device=dev, dtype=torch.float32)
            sw = torch.ones(1, N, device=dev, dtype=torch.float32)
            f8 = bench(lambda: torch._scaled_mm(Xf, Wf.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16))
            r["fp8_fwd_ms"] = round(f8, 3)
            r["fp8_fwd_tflops"] = round(fl / f8 / 1e9, 1)
            # fwd incl. quantizing X rowwise
            def q8():
                s = X.abs().amax(1, keepdim=True).float().clamp(min=1e-12) / 448.0
                xq = (X / s).to(torch.float8_e4m3fn)
                return torch._scaled_mm(xq, Wf.t(), scale_a=s, scale_b=sw, out_dtype=torch.bfloat16)
            r["fp8_fwd_with_quant_ms"] = round(bench(q8), 3)
        except Exception as e:
            r["fp8_err"] = str(e)[:200]
        # nf4
        Wq, st = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
        r["dequant_ms"] = round(bench(lambda: F.dequantize_4bit(Wq, st)), 3)
        r["bnb_matmul_ms"] = round(bench(lambda: bnb.matmul_4bit(X, Wq.t(), quant_state=st)), 3)
        res[name] = r
        del W, X, G
    out[T] = res
    print(T, json.dumps(res, indent=0), flush=True)
# matmul rates
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
out["bf16_8192_tflops"] = round(2 * 8192**3 / bench(lambda: a @ a) / 1e9, 1)
af = a.to(torch.float8_e4m3fn)
one = torch.ones((), device=dev)
out["fp8_8192_tflops"] = round(2 * 8192**3 / bench(lambda: torch._scaled_mm(af, af.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)) / 1e9, 1)
print(out["bf16_8192_tflops"], out["fp8_8192_tflops"])
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gemm.json"), "w"), indent=1)
