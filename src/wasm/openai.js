// OpenAI's API shape in the browser (WebLLM's too): `model.chat.completions.create(request)` and
// `model.completions.create(request)` resolve with the whole result or, with `stream: true`, an
// async iterable of chunks. Both stand on the model's one entry point,
// `run(endpoint, request, onChunk, signal)`, which calls `onChunk` with every chunk of a stream
// and resolves with the whole result; `signal` is anything with an `aborted` flag.

export function openAiApi(run) {
  const create = (endpoint) => (request, options) => start(run, endpoint, request, options);
  return { chat: { completions: { create: create('chat') } }, completions: { create: create('completions') } };
}

// The AbortSignal comes as the second argument, as the OpenAI client takes it (`{ signal }`), or
// as `signal` in the request.
async function start(run, endpoint, request, options) {
  if (request === null || typeof request !== 'object') {
    throw new Error('the request must be an object');
  }
  const { signal: requestSignal, ...body } = request;
  const signal = (options && options.signal) || requestSignal;
  if (!body.stream) {
    return run(endpoint, body, undefined, signal);
  }
  return stream(run, endpoint, body, signal);
}

// Resolves once the first chunk is there (or rejects with the request's error, so a bad request
// fails `create` itself, as it does with OpenAI's client); then yields the chunks. Leaving a
// `for await` loop early stops the generation. `finalChatCompletion()` (chat) or
// `finalCompletion()` (completions) resolves with the whole result, as OpenAI's client's stream
// helpers do; after leaving early its finish_reason is "abort".
async function stream(run, endpoint, body, signal) {
  const chunks = [];
  let finished = false;
  let failure = null;
  let left = false;
  const waiters = [];
  let started;
  const ready = new Promise((resolve) => { started = resolve; });
  const notify = () => {
    started();
    for (const wake of waiters.splice(0)) wake();
  };
  const stop = { get aborted() { return left || Boolean(signal && signal.aborted); } };
  const result = run(endpoint, body, (chunk) => { chunks.push(chunk); notify(); }, stop);
  const done = result.then(
    () => { finished = true; notify(); },
    (e) => { failure = e; finished = true; notify(); },
  );
  await ready;
  if (failure && chunks.length === 0) {
    throw failure;
  }
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() {
      while (chunks.length === 0 && !finished) {
        await new Promise((resolve) => { waiters.push(resolve); });
      }
      if (chunks.length > 0) return { value: chunks.shift(), done: false };
      if (failure) {
        const e = failure;
        failure = null;
        throw e;
      }
      return { value: undefined, done: true };
    },
    async return() {
      left = true;
      await done;
      chunks.length = 0;
      failure = null;
      return { value: undefined, done: true };
    },
    [endpoint === 'chat' ? 'finalChatCompletion' : 'finalCompletion']: () => result,
  };
}
