"""Denoiser backends, each turning a model into ``denoiser(cond) -> eps_fn`` like ``RissoleModel.denoiser``.

``torch_backend``: prepacked, channels-last PyTorch execution (fp32 or bf16);
``onnxruntime_backend``: the per-step UNet exported by ``onnx_export`` and run by ONNX Runtime (CPU).
"""
