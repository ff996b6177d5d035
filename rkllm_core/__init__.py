"""rkllm-py core: one model API over Rockchip's RKLLM runtime (NPU) and a PC engine."""
