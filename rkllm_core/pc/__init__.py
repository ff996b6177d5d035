"""The PC engine: torch + transformers, behaving like the RKLLM runtime. Needs the [pc] extra."""
