"""Model compression: int8 quantization (`quant`), pruning and distillation."""
