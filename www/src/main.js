// The demo page: talks to the model in a Web Worker and renders its stream.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });

let pending = null; // { resolve, reject, onToken } of the request in flight (onToken: tokens or chunks)
let info = null;

function status(text, state = 'busy') {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

function setBusy(busy) {
  for (const id of ['generate', 'compare', 'lens', 'chat-send']) $(id).disabled = busy || !info;
  for (const id of ['load-default', 'load-url', 'chat-reset']) $(id).disabled = busy;
  for (const id of ['stop', 'chat-stop']) $(id).disabled = !busy || !info;
}

function request(message, onToken) {
  return new Promise((resolve, reject) => {
    pending = { resolve, reject, onToken };
    worker.postMessage(message);
  });
}

worker.onmessage = ({ data }) => {
  switch (data.type) {
    case 'progress': {
      const bar = $('progress');
      bar.hidden = false;
      bar.max = data.total || 1;
      bar.value = data.done;
      status(`${data.phase === 'download' ? 'Downloading' : 'Loading weights'}: ${(data.done / 1e6).toFixed(1)} / ${(data.total / 1e6).toFixed(1)} MB`);
      break;
    }
    case 'token':
      if (pending && pending.onToken) pending.onToken(data);
      break;
    case 'chunk':
      if (pending && pending.onToken) pending.onToken(data.chunk);
      break;
    case 'loaded':
      $('progress').hidden = true;
      pending && pending.resolve(data.info);
      break;
    case 'done':
      pending && pending.resolve(data.result);
      break;
    case 'lens':
      pending && pending.resolve(data.lens);
      break;
    case 'error':
      pending && pending.reject(new Error(data.message));
      break;
  }
};

async function load(message, label) {
  setBusy(true);
  info = null;
  status(`Loading ${label}…`);
  try {
    info = await request({ ...message, device: $('device').value });
    const g = info.gpu || {};
    const where = info.backend === 'gpu'
      ? `WebGPU on ${[g.vendor, g.architecture, g.description].filter(Boolean).join(' ') || info.device.adapter || 'the GPU'}`
      : `the CPU (wasm) — ${info.backend_reason}`;
    $('model-info').textContent = `${label}: ${info.layers} layers, hidden ${info.hidden_size}, ${info.heads} heads (${info.kv_heads} kv), vocab ${info.vocab_size}, ${(info.parameters / 1e6).toFixed(1)}M parameters, weights ${info.memory.weight_format} (${(info.memory.weights / 1e6).toFixed(1)} MB) · runs on ${where} · wasm memory ${(info.wasm_memory_bytes / 1e6).toFixed(1)} MB`;
    $('model-info').dataset.backend = info.backend;
    $('exit-layer').max = info.layers - 1;
    $('exit-layer').value = Math.min(info.default_exit_layer || Math.max(1, Math.floor(info.layers / 4)), info.layers - 1);
    status('Ready', 'ready');
  } catch (e) {
    status(e.message, 'error');
  } finally {
    setBusy(false);
  }
}

function options(strategy) {
  return {
    strategy,
    // 'auto': chosen every round from measured costs and acceptance (self-speculative only).
    exitLayer: $('exit-auto').checked ? 'auto' : Number($('exit-layer').value),
    numSpeculations: $('speculations-auto').checked ? 'auto' : Number($('speculations').value),
    temperature: Number($('temperature').value),
    maxNewTokens: Number($('max-tokens').value),
    seed: 0,
  };
}

function describe(stats) {
  const parts = [`${stats.strategy}: ${stats.generated_tokens} tokens, ${stats.tokens_per_second.toFixed(1)} tokens/s`,
    `first token ${stats.time_to_first_token_ms.toFixed(0)} ms`];
  if (stats.rounds > 0) {
    parts.push(`acceptance ${(100 * stats.acceptance_rate).toFixed(1)}% (${stats.accepted}/${stats.drafted} drafts, ${stats.rounds} rounds)`);
  }
  if (stats.adaptive) {
    const shares = (h) => {
      const total = Object.values(h).reduce((a, b) => a + b, 0) || 1;
      return Object.entries(h).map(([k, v]) => `${k}: ${Math.round((100 * v) / total)}%`).join(', ');
    };
    parts.push(`auto exit layers ${shares(stats.adaptive.exit_layers)}`, `depths ${shares(stats.adaptive.depths)}`);
  }
  parts.push(`${stats.dispatches_per_token.toFixed(1)} dispatches/token`, `stop: ${stats.stop_reason}`);
  return parts.join(' · ');
}

async function generate(strategy) {
  const out = $('output');
  out.textContent = '';
  out.classList.toggle('hide-rejected', !$('show-rejected').checked);
  const result = await request({ type: 'generate', prompt: $('prompt').value, options: options(strategy) }, (t) => {
    if (!t.text) return;
    const span = document.createElement('span');
    span.className = t.kind;
    span.textContent = t.text;
    out.appendChild(span);
  });
  $('stats').textContent = describe(result.stats);
  out.dataset.text = result.text;
  return result;
}

function drawChart(rows) {
  const svg = $('chart');
  const max = Math.max(...rows.map((r) => r.value), 1e-9);
  svg.innerHTML = rows.map((r, i) => {
    const y = 10 + i * 50;
    const w = Math.max(2, (r.value / max) * 200);
    return `<text x="0" y="${y + 16}" font-size="11">${r.label}</text>` +
      `<rect x="0" y="${y + 22}" width="${w}" height="18" fill="${r.color}"></rect>` +
      `<text x="${w + 6}" y="${y + 36}" font-size="11">${r.value.toFixed(1)} tok/s</text>`;
  }).join('');
}

async function run(task) {
  setBusy(true);
  status('Working…');
  try {
    await task();
    status('Done', 'done');
  } catch (e) {
    status(e.message, 'error');
  } finally {
    setBusy(false);
  }
}

$('generate').onclick = () => run(() => generate($('strategy').value));
$('stop').onclick = () => worker.postMessage({ type: 'abort' });
$('compare').onclick = () => run(async () => {
  const ar = await generate('autoregressive');
  const ss = await generate('self-speculative');
  drawChart([
    { label: 'autoregressive', value: ar.stats.tokens_per_second, color: '#888' },
    { label: `self-speculative (E=${options().exitLayer}, d=${options().numSpeculations})`, value: ss.stats.tokens_per_second, color: '#0a66c2' },
  ]);
  const same = ar.text === ss.text ? 'identical text' : 'different text (sampling)';
  $('compare-result').textContent = `speedup ${(ss.stats.tokens_per_second / ar.stats.tokens_per_second).toFixed(2)}x, acceptance ${(100 * ss.stats.acceptance_rate).toFixed(1)}%, ${same}`;
  $('compare-result').dataset.same = String(ar.text === ss.text);
});
$('lens').onclick = () => run(async () => {
  const lens = await request({ type: 'logits', prompt: $('prompt').value });
  const table = $('lens-table');
  table.innerHTML = '<tr><th>layer</th><th colspan="5">top tokens (logit)</th></tr>' + lens.exits.map((e) =>
    `<tr><td>${e.layer}</td>${e.top.map(([, logit, text]) => `<td>${escape(JSON.stringify(text))} ${logit.toFixed(2)}</td>`).join('')}</tr>`).join('');
});

// The chat tab: the conversation so far, sent whole every turn (the model keeps its KV cache, so
// only the new messages are computed), the reply streamed with accepted drafts coloured.
const conversation = [];

function chatOptions() {
  const o = options($('strategy').value);
  return {
    strategy: o.strategy,
    exit_layer: o.exitLayer,
    num_speculations: o.numSpeculations,
    temperature: o.temperature,
    max_tokens: o.maxNewTokens,
    seed: 0,
  };
}

function bubble(role, text = '') {
  const div = document.createElement('div');
  div.className = `message ${role}`;
  div.textContent = text;
  $('chat-log').appendChild(div);
  return div;
}

async function chat() {
  const content = $('chat-input').value.trim();
  if (!content) return;
  conversation.push({ role: 'user', content });
  bubble('user', content);
  $('chat-input').value = '';
  const reply = bubble('assistant');
  try {
    const result = await request({ type: 'chat', messages: conversation, options: chatOptions() }, (chunk) => {
      const delta = chunk.choices[0] && chunk.choices[0].delta;
      if (!delta || !delta.content) return;
      const span = document.createElement('span');
      span.className = delta.kind || 'plain';
      span.textContent = delta.content;
      reply.appendChild(span);
    });
    // A stopped reply stays in the conversation as far as it got.
    conversation.push({ role: 'assistant', content: result.text });
    reply.dataset.text = result.text;
    const { cached_tokens: cached } = result.usage.prompt_tokens_details;
    $('chat-stats').textContent = `${describe(result.stats)} · finish: ${result.finish_reason} · ${cached} of ${result.usage.prompt_tokens} prompt tokens kept from the previous turn`;
    $('chat-stats').dataset.cached = String(cached);
  } catch (e) {
    // The message stays unanswered: take it back so the conversation still renders.
    conversation.pop();
    reply.remove();
    throw e;
  }
}

function showTab(name) {
  for (const tab of ['generate', 'chat']) {
    $(`tab-${tab}`).setAttribute('aria-selected', String(tab === name));
    $(`${tab}-view`).hidden = tab !== name;
  }
}

$('tab-generate').onclick = () => showTab('generate');
$('tab-chat').onclick = () => showTab('chat');
$('chat-send').onclick = () => run(chat);
$('chat-stop').onclick = () => worker.postMessage({ type: 'abort' });
$('chat-reset').onclick = () => {
  conversation.length = 0;
  $('chat-log').textContent = '';
  $('chat-stats').textContent = '';
};

function escape(s) {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
}

const defaultUrl = new URL('models/default/', document.baseURI).href;
$('load-default').onclick = () => load({ type: 'load', url: defaultUrl }, 'default model');
$('load-url').onclick = () => $('url').value && load({ type: 'load', url: $('url').value }, $('url').value);
$('folder').onchange = (e) => load({ type: 'loadFiles', files: Array.from(e.target.files) }, 'local folder');
$('gguf').onchange = (e) => e.target.files[0] && load({ type: 'loadFiles', files: [e.target.files[0]] }, e.target.files[0].name);
const drop = $('drop');
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
// A dropped folder arrives as a directory entry: walk it for its files.
async function entryFiles(entry) {
  if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
  const reader = entry.createReader();
  const files = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (batch.length === 0) return files;
    for (const child of batch) files.push(...await entryFiles(child));
  }
}
drop.ondrop = async (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const entries = Array.from(e.dataTransfer.items).map((item) => item.webkitGetAsEntry()).filter(Boolean);
  const files = (await Promise.all(entries.map(entryFiles))).flat();
  load({ type: 'loadFiles', files }, 'dropped files');
};

// Without WebGPU the model runs on the CPU backend compiled to wasm ("auto").
load({ type: 'load', url: defaultUrl }, 'default model');
