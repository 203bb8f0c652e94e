// Fetches a Hugging Face checkpoint directory from a base URL into Blobs, following
// model.safetensors.index.json shards, or a single .gguf file. Weight files go through the Cache
// API, so a reload reads them from disk instead of the network; browsers keep large Blobs on disk,
// so a multi-gigabyte checkpoint never has to fit in wasm memory. Reports progress as (bytes
// done, bytes total).

const CACHE = 'layerskip-weights-v1';

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  }
  return response;
}

async function optional(url) {
  const response = await fetch(url);
  return response.ok ? await response.blob() : null;
}

// Reads a response body to the end, counting bytes, and returns it as a Blob.
async function readCounting(response, onBytes) {
  const reader = response.body.getReader();
  const chunks = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    onBytes(value.byteLength);
  }
  return new Blob(chunks);
}

// A URL ending in .gguf is one GGUF file (weights, tokenizer and chat template together);
// anything else is a Hugging Face checkpoint folder.
export async function fetchModel(url, onProgress) {
  const path = new URL(url, globalThis.location ? globalThis.location.href : undefined).pathname;
  if (/\.gguf$/i.test(path)) {
    const name = decodeURIComponent(path.split('/').pop());
    const base = url.slice(0, url.length - url.split('/').pop().length);
    return fetchWeights(base, [name], new Map(), onProgress);
  }
  const base = url.endsWith('/') ? url : url + '/';
  const files = new Map();
  files.set('config.json', await (await fetchOk(base + 'config.json')).blob());
  files.set('tokenizer.json', await (await fetchOk(base + 'tokenizer.json')).blob());
  for (const name of ['generation_config.json', 'tokenizer_config.json', 'chat_template.jinja', 'model.safetensors.index.json', 'token_frequencies.json']) {
    const blob = await optional(base + name);
    if (blob) files.set(name, blob);
  }
  let weights = ['model.safetensors'];
  if (files.has('model.safetensors.index.json')) {
    const index = JSON.parse(await files.get('model.safetensors.index.json').text());
    if (!index || typeof index.weight_map !== 'object') {
      throw new Error('model.safetensors.index.json: no `weight_map` object');
    }
    weights = [...new Set(Object.values(index.weight_map))].sort();
    // Shards are plain file names next to config.json: a hostile index must not send the
    // browser to another path or site (the Rust side checks the same rule again).
    for (const name of weights) {
      const plain = typeof name === 'string' && name.length > 0 && name !== '.' && name !== '..' &&
        !/[\/\\:\0]/.test(name);
      if (!plain || !new URL(name, base).href.startsWith(base)) {
        throw new Error(`model.safetensors.index.json: ${JSON.stringify(name)} is not a plain file name inside the model folder`);
      }
    }
  }
  return fetchWeights(base, weights, files, onProgress);
}

// Adds the weight files `names` (next to `base`) to `files`, from the Cache API where a
// previous load put them, else downloaded with progress and cached.
async function fetchWeights(base, names, files, onProgress) {
  const cache = typeof caches !== 'undefined' ? await caches.open(CACHE).catch(() => null) : null;
  const cached = new Map();
  const sizes = new Map();
  for (const name of names) {
    const hit = cache ? await cache.match(base + name) : null;
    if (hit) {
      cached.set(name, await hit.blob());
    } else {
      const head = await fetch(base + name, { method: 'HEAD' }).catch(() => null);
      sizes.set(name, Number(head && head.headers.get('content-length')) || 0);
    }
  }
  const total = [...sizes.values()].reduce((a, b) => a + b, 0);
  let done = 0;
  for (const name of names) {
    if (cached.has(name)) {
      files.set(name, cached.get(name));
      continue;
    }
    const blob = await readCounting(await fetchOk(base + name), (n) => {
      done += n;
      if (onProgress) onProgress(done, Math.max(total, done));
    });
    if (cache) {
      // A full quota only costs the cache, not the load.
      await cache.put(base + name, new Response(blob)).catch((e) => console.warn(`not cached: ${name}: ${e}`));
    }
    files.set(name, blob);
  }
  return files;
}

// Turns a FileList (a folder picked or dropped), an array of Files, or an object / Map of
// name -> Blob | ArrayBuffer | TypedArray into a Map of file name -> Blob.
export function toBlobMap(input) {
  const files = new Map();
  const add = (name, value) => {
    const base = name.split('/').pop();
    files.set(base, value instanceof Blob ? value : new Blob([value]));
  };
  if (input instanceof Map) {
    for (const [name, value] of input) add(name, value);
  } else if (typeof input.length === 'number') {
    for (const file of Array.from(input)) add(file.webkitRelativePath || file.name, file);
  } else {
    for (const [name, value] of Object.entries(input)) add(name, value);
  }
  return files;
}
