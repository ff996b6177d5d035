"""File formats read by both engines and the toolkit; no engine is imported here, and the
toolkit only by :func:`.export.load_export`, for the simulated quantized layers it rebuilds.

- :mod:`.gguf`: the GGUF container (plain GGUF files and the masked ``.rkllm`` variant): one
  bounded reader that checks every count and length against the bytes left before allocating.
- :mod:`.rkllm`: what a ``.rkllm`` file says about itself (typed accessors over :mod:`.gguf`).
- :mod:`.export`: the toolkit's portable quantized export (``NAME.rkllm-pc/``).
"""
