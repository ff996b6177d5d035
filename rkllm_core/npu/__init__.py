"""The NPU engine: Rockchip's librkllmrt.so through cffi (ABI mode), for every runtime family."""
