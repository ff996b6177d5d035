"""Convert a model the way Rockchip's rkllm-toolkit examples do, with rkllm-py's toolkit.

The only change from Rockchip's script is the import line. Rockchip's toolkit writes a
``.rkllm`` file for the NPU; without it installed, rkllm-py writes a portable quantized model
(``.rkllm-pc`` directory) that the PC engine runs with the same quantized numerics:

    python examples/convert.py smollm2 --dtype w8a8 --platform rk3588
    python -c "from rkllm_core import RKLLMModel; ..."   # RKLLMModel(path, backend="pc")
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# from rkllm.api import RKLLM          # Rockchip's toolkit (x86-64 Linux wheel)
from rkllm_core.toolkit import RKLLM  # rkllm-py: same calls, runs anywhere torch does


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="Hugging Face directory, .gguf file, or demo name 'smollm2'")
    ap.add_argument("--dtype", default="w8a8")
    ap.add_argument("--platform", default="rk3588")
    ap.add_argument("--npu-cores", type=int, default=3)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    modelpath = Path(args.model)
    if not modelpath.exists():
        from rkllm_core.demo_models import fetch_model

        modelpath = fetch_model(args.model)

    llm = RKLLM()

    # Load model (Hugging Face directory or GGUF file)
    if modelpath.suffix == ".gguf":
        ret = llm.load_gguf(model=str(modelpath))
    else:
        ret = llm.load_huggingface(model=str(modelpath), model_lora=None, device="cpu")
    if ret != 0:
        print("Load model failed!")
        return ret

    # Calibration data: prompts with the chat template applied, and their answers
    dataset = Path(tempfile.gettempdir()) / "data_quant.json"
    samples = [
        ("What is an NPU?", "An NPU is a processor specialised for neural network inference."),
        ("Write a haiku about rivers.", "Water finds its way,\nstone by stone the valley"
         " bends,\nthe sea waits below."),
        ("What is 17 times 3?", "17 times 3 is 51."),
    ]  # fmt: skip
    tok = llm.tokenizer
    data = [
        {
            "input": tok.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            ),
            "target": a,
        }
        for q, a in samples
    ]
    dataset.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    # Build model
    ret = llm.build(
        do_quantization=True,
        optimization_level=1,
        quantized_dtype=args.dtype,
        quantized_algorithm="normal",
        target_platform=args.platform,
        num_npu_core=args.npu_cores,
        extra_qparams=None,
        dataset=str(dataset),
        hybrid_rate=0,
        max_context=4096,
    )
    if ret != 0:
        print("Build model failed!")
        return ret

    # PC simulation: a quick look at the quantized model's answer
    print(llm.chat_model([{"role": "user", "content": "What is an NPU?"}], {"max_length": 40}))

    # Export: .rkllm needs Rockchip's toolkit; rkllm-py writes NAME.rkllm-pc
    out = args.output or f"./{modelpath.stem}_{args.dtype}_{args.platform}.rkllm-pc"
    ret = llm.export_rkllm(out)
    if ret != 0:
        print("Export model failed!")
        return ret
    print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
