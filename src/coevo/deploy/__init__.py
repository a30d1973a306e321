"""Deployment: exporting generators (torch.export, ONNX, safetensors, TorchScript) with parity checks,
the per-target artifacts (INT8 ONNX for CPUs, float16 programs for CUDA), loading exported files,
the runtimes that run them, and timing: benchmarks and the latency tables a search can budget with.

* :mod:`.export` -- writers and the parity check; :mod:`.targets` -- ``cpu``/``cuda`` deployment
* :mod:`.quantize` -- static INT8 with its quality check; :mod:`.exported` -- loading exported files
* :mod:`.backends` -- runtimes for ``coevo bench``; :mod:`.cuda_runner` -- CUDA graphs / compile
* :mod:`.bench` -- interleaved timing; :mod:`.latency` -- per-unit latency tables
"""
