// A bounded load test of `layerskip serve` on 127.0.0.1 with the OpenAI client: 8 concurrent
// clients x 25 requests (chat and completions, streamed or whole, greedy or sampled); every tenth
// request reads three chunks of a long stream and walks away. The queue holds 3 waiting requests,
// so 8 clients overflow it: those requests get 503, and their client waits as Retry-After says
// and tries again, at most 3 times (as the OpenAI client would on its own; here counted).
//
// Checks: every request completes, is refused 3 times with 503 + Retry-After, or was abandoned by
// its client, and none hangs (a 120 s timeout each); every abandoned generation is cancelled on the
// server (its /health counts); the server's memory does not grow from the first half of the run
// to the second. Prints p50/p95 latency, time to first token and tokens/s.
import OpenAI from 'openai';
import { startServer } from './server.mjs';

const CLIENTS = 8;
const REQUESTS = 25;
const QUEUE = 3;
const server = await startServer(['--queue', String(QUEUE)]);
const client = new OpenAI({ baseURL: server.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
const model = 'layerskip-default';
const prompts = ['def fibonacci(n):', 'import os\n', 'class Stack:\n    def push(self, item):', 'for i in range(10):'];

// A small deterministic generator, so every run sends the same requests.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const results = [];
let refusals = 0;

async function one(clientIndex, i) {
  const random = rng(clientIndex * 1000 + i + 1);
  const abandon = (clientIndex * REQUESTS + i) % 10 === 3;
  const chat = random() < 0.5;
  const stream = abandon || random() < 0.6;
  const text = prompts[Math.floor(random() * prompts.length)];
  const body = {
    model,
    max_tokens: abandon ? 600 : 16 + Math.floor(random() * 17),
    temperature: random() < 0.5 ? 0 : 0.8,
    seed: i,
    ignore_eos: abandon,
    ...(chat ? { messages: [{ role: 'user', content: text }] } : { prompt: text }),
    ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
  };
  if (random() < 0.3) Object.assign(body, { strategy: 'self-speculative', exit_layer: 'auto', num_speculations: 'auto' });
  const api = chat ? client.chat.completions : client.completions;
  const start = performance.now();
  for (let attempt = 1; ; attempt++) {
    const outcome = await attemptOnce(api, body, stream, abandon, start);
    if (outcome !== 'refused') return;
    refusals += 1;
    if (attempt === 3) {
      results.push({ outcome: 'refused', ms: performance.now() - start });
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function attemptOnce(api, body, stream, abandon, start) {
  let first = null;
  try {
    if (!stream) {
      const r = await api.create(body);
      results.push({ outcome: 'completed', ms: performance.now() - start, ttft: null, tokens: r.usage.completion_tokens });
      return;
    }
    let chunks = 0;
    let tokens = 0;
    for await (const chunk of await api.create(body)) {
      // The first text, not the chat stream's opening chunk (the role), which comes before prefill.
      const text = chunk.choices[0]?.delta?.content ?? chunk.choices[0]?.text;
      if (first === null && text) first = performance.now() - start;
      chunks += 1;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      // Leaving the loop closes the connection: the server should stop generating.
      if (abandon && chunks === 3) break;
    }
    results.push({ outcome: abandon ? 'abandoned' : 'completed', ms: performance.now() - start, ttft: first, tokens });
  } catch (e) {
    if (e instanceof OpenAI.APIError && e.status === 503) {
      if (e.headers.get('retry-after') !== '1') throw new Error('503 without Retry-After');
      return 'refused';
    }
    results.push({ outcome: 'failed', error: `${e.constructor.name}: ${e.message}`, body });
  }
}

async function health() {
  return (await (await fetch(`${server.origin}/health`)).json()).jobs;
}

async function idle() {
  for (let waited = 0; waited < 60_000; waited += 50) {
    const jobs = await health();
    if (jobs.running === 0 && jobs.queued === 0) return jobs;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the server did not become idle');
}

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};

// Warm up (the first request pays for calibration and page faults), then two halves.
await client.completions.create({ model, prompt: prompts[0], max_tokens: 8 });
const rss = [server.rss()];
const wall = performance.now();
for (const [from, to] of [[0, REQUESTS / 2 | 0], [REQUESTS / 2 | 0, REQUESTS]]) {
  await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = from; i < to; i++) await one(c, i);
  }));
  await idle();
  rss.push(server.rss());
}
const seconds = (performance.now() - wall) / 1000;
const jobs = await idle();
server.close();

const count = (outcome) => results.filter((r) => r.outcome === outcome).length;
const completed = results.filter((r) => r.outcome === 'completed');
const tokens = results.reduce((sum, r) => sum + (r.tokens || 0), 0);
const summary = {
  requests: results.length,
  completed: completed.length,
  responses_503: refusals,
  refused_3_times: count('refused'),
  abandoned: count('abandoned'),
  failed: count('failed'),
  latency_ms: { p50: percentile(completed.map((r) => r.ms), 50), p95: percentile(completed.map((r) => r.ms), 95) },
  time_to_first_token_ms: {
    p50: percentile(completed.filter((r) => r.ttft !== null).map((r) => r.ttft), 50),
    p95: percentile(completed.filter((r) => r.ttft !== null).map((r) => r.ttft), 95),
  },
  completion_tokens: tokens,
  tokens_per_second: tokens / seconds,
  wall_seconds: seconds,
  rss_mb: rss.map((b) => +(b / 2 ** 20).toFixed(1)),
  server_jobs: jobs,
};
console.log(JSON.stringify(summary, null, 2));

const problems = [];
if (results.length !== CLIENTS * REQUESTS) problems.push(`${results.length} results for ${CLIENTS * REQUESTS} requests`);
for (const r of results.filter((r) => r.outcome === 'failed')) problems.push(`failed: ${r.error} ${JSON.stringify(r.body)}`);
if (refusals === 0) problems.push('the queue never filled: no 503 seen');
if (summary.abandoned < 10) problems.push(`only ${summary.abandoned} abandoned streams`);
// Every abandoned stream was still generating (600 tokens) when its client left.
if (jobs.cancelled !== summary.abandoned) problems.push(`${jobs.cancelled} jobs cancelled for ${summary.abandoned} abandoned streams`);
// +1: the warm-up request.
if (jobs.finished !== completed.length + 1) problems.push(`${jobs.finished} jobs finished for ${completed.length} completed requests`);
if (jobs.failed !== 0) problems.push(`${jobs.failed} jobs failed on the server`);
// Memory: the second half may not need more than the first did (allowing 10% + 8 MiB of noise).
if (rss[2] > rss[1] * 1.1 + 8 * 2 ** 20) problems.push(`memory grew from ${rss[1]} to ${rss[2]} bytes between the halves`);
if (problems.length) {
  console.error(`load: FAIL\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('load: ok');
