"""edgevit: make trained vision transformers (hybrids above all) ready for edge devices.

The public API, the same verbs as the command line and the same code path::

    import edgevit
    result = edgevit.compress("int8_ptq")            # a shipped recipe name or a recipe file
    edgevit.exporters("timm:deit_tiny_patch16_224", "out/", to="onnx")
    edgevit.bench("out/model.onnx")
    edgevit.sweep("tome_fp32", "tokens.r=4,8")
    edgevit.sweep_plan("plan.yaml", executor="ray")
"""
from edgevit._version import __version__
__all__ = ["bench", "compress", "export", "sweep", "sweep_plan"]


def __getattr__(name: str):
    # torch, timm and onnx load only when a verb is used, so `import edgevit` stays cheap
    if name in __all__:
        from edgevit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgevit' has no attribute {name!r}")
