"""The settings ``derain export`` and ``derain bench`` show in their ``--help``, kept free of
PyTorch: their help and shell completion loaded it through ``export`` and ``bench`` (about
4 s each time, an audit). ``export``, ``quantize`` and ``bench`` take them from here."""

from __future__ import annotations

#: ``derain export --opset`` default and the oldest opset accepted (``export.check_opset``)
DEFAULT_OPSET = 17
MIN_OPSET = 13

#: Convolutions an int8 graph keeps in fp32 by default, and the photos its calibration
#: uses (``quantize.build_int8``: ``CALIB_COUNT`` crops calibrate, ``HELD_OUT_COUNT`` more
#: rank the convolutions when some are kept in fp32)
DEFAULT_KEEP_FP32 = 8
CALIB_COUNT = 8
HELD_OUT_COUNT = 4

#: ``derain bench --variants``: measured by default, and on request only
#: (``bf16_compile``: compiling takes minutes here; ``bf16_autotune``: bf16 with cuDNN
#: autotuning, CUDA only; ``bf16_unfused``: bf16 on a CPU without ``models.cpu_fusion``)
DEFAULT_VARIANTS = ("fp32", "channels_last", "bf16", "fp16", "onnx", "int8")
EXTRA_VARIANTS = ("bf16_compile", "bf16_autotune", "bf16_unfused")
