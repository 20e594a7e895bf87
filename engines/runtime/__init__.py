"""Where a network runs: backend choice, the CPU/ONNX Runtime/CUDA runners, ONNX export, TensorRT."""
