"""Peer runtimes for `layerskip bench --peers`: the same GGUF file, prompts (as token ids) and
thread count on llama.cpp (the llama-cpp-python package) and on Hugging Face transformers (which
dequantizes the GGUF file to float32), each where installed. Reads a JSON request on stdin and
prints one JSON object: per peer, the median prefill and decode tokens/s over the prompts and
repetitions (greedy, EOS ignored, after a warm-up), or why it did not run.

Embedded in the layerskip binary and run as `python3 -c`; it needs nothing but the peers.
"""
import json
import os
import statistics
import sys
import time
import warnings

# Peers' own progress bars and deprecation notes would interleave with the bench's table.
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

request = json.load(sys.stdin)
path, prompts, new_tokens = request["model"], request["prompts"], request["max_new_tokens"]
threads, repetitions = request["threads"], request["repetitions"]
context = max(len(p) for p in prompts) + new_tokens + 8


def medians(runs):
    return {
        "prefill_tokens_per_second": statistics.median(r[0] for r in runs),
        "decode_tokens_per_second": statistics.median(r[1] for r in runs),
    }


def llama_cpp():
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                          n_ctx=context, n_batch=512, verbose=False)
    runs = []
    for rep in range(repetitions + 1):
        for prompt in prompts:
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(new_tokens - 1):
                llm.eval([token])
                token = int(llm.scores[llm.n_tokens - 1].argmax())
            decode = time.perf_counter() - start
            if rep > 0:
                runs.append((len(prompt) / prefill, (new_tokens - 1) / decode))
    return {"version": llama_cpp.__version__, **medians(runs)}


def transformers():
    import torch
    import transformers as hf

    hf.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    folder, name = os.path.split(os.path.abspath(path))
    model = hf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    runs = []
    with torch.inference_mode():
        for rep in range(repetitions + 1):
            for prompt in prompts:
                ids = torch.tensor([prompt])
                start = time.perf_counter()
                out = model(ids, use_cache=True)
                prefill = time.perf_counter() - start
                cache, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
                start = time.perf_counter()
                for _ in range(new_tokens - 1):
                    out = model(token, past_key_values=cache, use_cache=True)
                    cache, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
                decode = time.perf_counter() - start
                if rep > 0:
                    runs.append((len(prompt) / prefill, (new_tokens - 1) / decode))
    return {"version": hf.__version__, "torch": torch.__version__, **medians(runs)}


result = {}
for name, run in [("llama.cpp", llama_cpp), ("transformers", transformers)]:
    try:
        result[name] = run()
    except ImportError as e:
        result[name] = {"skipped": f"not installed ({e.name})"}
    except Exception as e:  # a peer's failure is reported, not fatal to the bench
        result[name] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(result))
