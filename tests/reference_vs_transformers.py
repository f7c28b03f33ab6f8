"""Check the numpy reference (tests/reference.py) against transformers itself, once, outside CI.

CI has no torch, so this is run by hand; docs/models.md records the result. Two steps, two venvs:

    .venv/bin/python tests/reference_vs_transformers.py save /tmp/refcheck
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install torch transformers numpy safetensors
    /tmp/tfvenv/bin/python tests/reference_vs_transformers.py compare /tmp/refcheck

``save`` runs the reference on each tiny checkpoint (edgekit.samples.checkpoints.TINY_ARCHS) over a
prompt that crosses its sliding window and rope thresholds; ``compare`` loads the same checkpoints
with transformers in float32 (eager attention) and prints the largest logit difference per architecture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# (arch, prompt repeats, tokens kept): Phi-3 twice, on each side of its 256-token longrope threshold.
CASES = [("qwen3", 1, 120), ("llama3", 1, 120), ("smollm3", 1, 120), ("gemma3", 1, 120), ("phi3", 4, 200),
         ("phi3", 4, 416)]


def save(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from reference import ReferenceModel
    from test_fidelity import PROMPTS
    from tokenizers import Tokenizer

    from edgekit.samples.checkpoints import cached_random_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for arch, repeats, keep in CASES:
        ck = cached_random_checkpoint(arch)
        tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
        ids = tok.encode(" ".join(PROMPTS * repeats), add_special_tokens=False).ids[:keep]
        name = f"{arch}-{len(ids)}"
        np.save(out / f"{name}.npy", ReferenceModel(ck).logits(ids))
        cases.append({"name": name, "dir": str(ck), "ids": ids})
    (out / "cases.json").write_text(json.dumps(cases))


def compare(out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    for case in json.loads((out / "cases.json").read_text()):
        model = AutoModelForCausalLM.from_pretrained(case["dir"], dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            got = model(torch.tensor([case["ids"]])).logits[0].numpy()
        want = np.load(out / f"{case['name']}.npy")
        print(f"{case['name']}: {type(model).__name__}, max |logit difference| {np.abs(got - want).max():.1e} "
              f"(logits up to {np.abs(want).max():.0f}), same argmax {np.mean(got.argmax(-1) == want.argmax(-1)):.0%}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    {"save": save, "compare": compare}[sys.argv[1]](Path(sys.argv[2]))
