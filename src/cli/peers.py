"""Peer runtimes for `layerskip bench --peers`: the same GGUF file, prompts (as token ids) and
thread count on llama.cpp (the llama-cpp-python package) and on Hugging Face transformers (which
dequantizes the GGUF file to float32), each where installed.

Embedded in the layerskip binary and run as `python3 -c`; it needs nothing but the peers. The
bench interleaves the peers' repetitions with its own, so a change in the machine's load lands on
both sides of a ratio: one JSON request line on stdin, then one JSON line out saying what each
peer is (its version, or why it did not start); then per `run` line on stdin, one repetition
of every prompt on each peer (greedy, EOS ignored) and one JSON line out with each peer's
[prefill, decode] tokens/s per prompt, or its error.
"""
import json
import os
import sys
import time
import warnings

# Peers' own progress bars and deprecation notes would interleave with the bench's table.
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# A peer's worker threads keep spinning for a while after its last call (OpenMP's wait policy,
# ggml's polling): the bench waits this long before its own next run, so they do not share the
# cores with it.
SETTLE_SECONDS = 0.5

request = json.loads(sys.stdin.readline())
path, prompts, new_tokens = request["model"], request["prompts"], request["max_new_tokens"]
threads = request["threads"]
context = max(len(p) for p in prompts) + new_tokens + 8


def timed(prefill, step):
    """(prompt tokens/s, decode tokens/s) of one prompt: `prefill(prompt)` gives the first token,
    `step(token)` each next one."""
    def run(prompt):
        start = time.perf_counter()
        token = prefill(prompt)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = step(token)
        return [len(prompt) / prefill_s, (new_tokens - 1) / (time.perf_counter() - start)]
    return run


def llama_cpp():
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                          n_ctx=context, n_batch=512, verbose=False)

    def prefill(prompt):
        llm.reset()
        llm.eval(prompt)
        return int(llm.scores[llm.n_tokens - 1].argmax())

    def step(token):
        llm.eval([token])
        return int(llm.scores[llm.n_tokens - 1].argmax())

    return {"version": llama_cpp.__version__}, timed(prefill, step)


def transformers():
    import torch
    import transformers as hf

    hf.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    folder, name = os.path.split(os.path.abspath(path))
    model = hf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    cache = None

    def forward(ids):
        nonlocal cache
        with torch.inference_mode():
            out = model(ids, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        return out.logits[0, -1].argmax().view(1, 1)

    def prefill(prompt):
        nonlocal cache
        cache = None
        return forward(torch.tensor([prompt]))

    info = {"version": hf.__version__, "torch": torch.__version__}
    return info, timed(prefill, forward)


def answer(value):
    print(json.dumps(value), flush=True)


runners, infos = {}, {}
for name, start in [("llama.cpp", llama_cpp), ("transformers", transformers)]:
    try:
        infos[name], runners[name] = start()
    except ImportError as e:
        infos[name] = {"skipped": f"not installed ({e.name})"}
    except Exception as e:  # a peer's failure is reported, not fatal to the bench
        infos[name] = {"error": f"{type(e).__name__}: {e}"}
answer(infos)

for line in sys.stdin:
    rates = {}
    for name, run in list(runners.items()):
        try:
            rates[name] = [run(prompt) for prompt in prompts]
        except Exception as e:
            rates[name] = {"error": f"{type(e).__name__}: {e}"}
            del runners[name]
    time.sleep(SETTLE_SECONDS)
    answer(rates)
