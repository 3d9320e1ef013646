"""orchard.align: SFT, DPO and RLAIF on (quantized) LoRA adapters, with evaluation and reports."""
