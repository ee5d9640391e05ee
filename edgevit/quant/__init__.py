"""Post-training quantization: quantizers, observers, range search, sites and the QuantPlan."""
from edgevit.quant.config import ActivationQuant, QuantConfig, WeightQuant
from edgevit.quant.plan import QuantPlan, apply_plan, calibrate, quantize

__all__ = ["ActivationQuant", "QuantConfig", "QuantPlan", "WeightQuant", "apply_plan", "calibrate", "quantize"]
