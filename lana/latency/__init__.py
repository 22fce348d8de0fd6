"""Latency on the target device: phase 2b and every later timing.

``backends`` (how one inference runs: ONNX Runtime, torch, OpenVINO, CUDA, TensorRT),
``timing`` (the stopwatch: settings, the stopping rule, interleaved end-to-end timing,
normalisation by the reference op), ``lut`` (the latency lookup table file and the drift
monitor that watches the machine while it is built),
``profile`` (phase 2b: every candidate timed at its layer; LUT bundles), ``spread`` (the
search margin from repeated timings), ``independent`` and ``ort_timer`` (``lana verify
--independent``: the exported files timed in fresh processes). Nothing is imported here,
so ``python -m lana.latency.ort_timer`` loads only that module.
"""
