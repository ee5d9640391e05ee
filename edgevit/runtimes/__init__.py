"""The runtime registry. Every module in this package (``onnxruntime``, ``tensorrt``, ``coreml``,
``openvino``, ...) registers its export config and its :class:`Runtime` when imported; they are all
imported here, so adding a runtime is adding its module."""
import importlib
import pkgutil

from edgevit.runtimes.base import (RUNTIMES, ExportBase, OnnxGraphFields, Runtime, for_format, for_suffix, formats,
                                   register, runtime)

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "device"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["RUNTIMES", "ExportBase", "OnnxGraphFields", "Runtime", "for_format", "for_suffix", "formats",
           "register", "runtime"]
