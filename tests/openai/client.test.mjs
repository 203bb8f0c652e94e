// `layerskip serve` through the official OpenAI client library (the `openai` npm package):
// chat and completions, whole and streamed, stop strings, seeds, LayerSkip's own fields, errors
// and the API key. Answers are compared with `layerskip generate` on the same model and device.
import OpenAI from 'openai';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { generate, startServer } from './server.mjs';

const prompt = 'def fibonacci(n):';
const model = 'layerskip-default';
let server;
let client;

before(async () => {
  server = await startServer();
  client = new OpenAI({ baseURL: server.baseURL, apiKey: 'unused' });
});
after(() => server.close());

// The text of a stream of completion or chat chunks, and its chunks.
async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.text ?? c.choices[0]?.delta?.content ?? '').join('');
  return { text, chunks };
}

test('the model is listed', async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [model]);
  assert.equal((await client.models.retrieve(model)).id, model);
});

test('completions equal the CLI, whole and streamed', async () => {
  const reference = generate(['--prompt', prompt, '--max-new-tokens', '24']);
  const whole = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
  assert.equal(whole.choices[0].text, reference.text);
  assert.equal(whole.choices[0].finish_reason, reference.stats.stop_reason === 'eos' ? 'stop' : 'length');
  assert.equal(whole.usage.prompt_tokens, reference.prompt_tokens.length);
  assert.equal(whole.usage.completion_tokens, reference.tokens.length);
  assert.equal(whole.usage.total_tokens, reference.prompt_tokens.length + reference.tokens.length);

  const stream = await client.completions.create({
    model, prompt, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  const { text, chunks } = await collect(stream);
  assert.equal(text, reference.text);
  assert.equal(chunks.at(-1).usage.completion_tokens, reference.tokens.length);
  assert.ok(chunks.length > 5, `${chunks.length} chunks: the text arrives in pieces`);
});

test('chat renders the chat template and equals the CLI, whole and streamed', async () => {
  const system = 'You write Python.';
  const user = 'A function that adds two numbers.';
  const reference = generate(['--chat', '--system', system, '--prompt', user, '--max-new-tokens', '20']);
  const messages = [{ role: 'system', content: system }, { role: 'user', content: user }];
  const whole = await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0 });
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.choices[0].message.content, reference.text);
  assert.equal(whole.usage.prompt_tokens, reference.prompt_tokens.length);

  const stream = await client.chat.completions.create({
    model, messages, max_completion_tokens: 20, temperature: 0, stream: true,
  });
  const { text, chunks } = await collect(stream);
  assert.equal(text, reference.text);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(chunks.at(-1).choices[0].finish_reason, whole.choices[0].finish_reason);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
});

test('the next turn of a conversation reuses the KV cache', async () => {
  const messages = [{ role: 'user', content: 'Sort a list.' }];
  const first = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
  messages.push(first.choices[0].message, { role: 'user', content: 'Now reverse it.' });
  const second = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
  const cached = second.usage.prompt_tokens_details.cached_tokens;
  assert.ok(cached >= first.usage.prompt_tokens, `${cached} of ${second.usage.prompt_tokens} kept`);
  assert.equal(second.stats.cached_prompt_tokens, cached);
});

test('stop strings cut the text, whole and streamed', async () => {
  const full = generate(['--prompt', prompt, '--max-new-tokens', '24']).text;
  const stop = full.trim().slice(4, 6);
  const expected = full.slice(0, full.indexOf(stop));
  for (const stops of [stop, [stop, 'never appears']]) {
    const whole = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stop: stops });
    assert.equal(whole.choices[0].text, expected);
    assert.equal(whole.choices[0].finish_reason, 'stop');
    const { text } = await collect(await client.completions.create({
      model, prompt, max_tokens: 24, temperature: 0, stop: stops, stream: true,
    }));
    assert.equal(text, expected);
  }
});

test('a seed makes sampling repeatable, and equal to the CLI with that seed', async () => {
  const reference = generate(['--prompt', prompt, '--max-new-tokens', '24', '--temperature', '1', '--seed', '7']);
  const ask = (seed) => client.completions.create({ model, prompt, max_tokens: 24, temperature: 1, seed });
  const [a, b, c] = [await ask(7), await ask(7), await ask(8)];
  assert.equal(a.choices[0].text, reference.text);
  assert.equal(b.choices[0].text, a.choices[0].text);
  assert.notEqual(c.choices[0].text, a.choices[0].text);
});

test('LayerSkip fields: self-speculative greedy equals autoregressive, with its statistics', async () => {
  const reference = generate(['--prompt', prompt, '--max-new-tokens', '24']);
  for (const fields of [
    { strategy: 'self-speculative', exit_layer: 2, num_speculations: 3 },
    { strategy: 'self-speculative', exit_layer: 'auto', num_speculations: 'auto' },
    { strategy: 'self-speculative', exit_layer: 4, draft_confidence: 0.3 },
  ]) {
    const r = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, ...fields });
    assert.equal(r.choices[0].text, reference.text, JSON.stringify(fields));
    assert.equal(r.stats.strategy, 'self-speculative');
    assert.ok(r.stats.rounds > 0 && r.stats.drafted > 0, JSON.stringify(r.stats));
  }
  const early = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0, strategy: 'early-exit', exit_layer: 2 });
  assert.equal(early.choices[0].text, generate(['--prompt', prompt, '--max-new-tokens', '8', '--strategy', 'early-exit', '--exit-layer', '2']).text);
});

test('bad requests are OpenAI errors the client raises', async () => {
  const cases = [
    [{ prompt, temperature: 3 }, OpenAI.BadRequestError, /temperature/],
    [{ prompt, max_tokens: 5000 }, OpenAI.BadRequestError, /context holds 1024/],
    [{ prompt, logprobs: 2 }, OpenAI.BadRequestError, /logprobs/],
    [{ prompt, strategy: 'sometimes' }, OpenAI.BadRequestError, /strategy/],
  ];
  for (const [body, kind, message] of cases) {
    await assert.rejects(client.completions.create({ model, ...body }), (e) => {
      assert.ok(e instanceof kind, `${e.constructor.name}: ${e.message}`);
      assert.match(e.message, message);
      return true;
    });
  }
  await assert.rejects(client.completions.create({ model: 'gpt-4o', prompt }), OpenAI.NotFoundError);
  await assert.rejects(client.chat.completions.create({ model, messages: [] }), OpenAI.BadRequestError);
});

test('an API key from the environment is required', async () => {
  const keyed = await startServer([], { LAYERSKIP_API_KEY: 'sesame' });
  try {
    const right = new OpenAI({ baseURL: keyed.baseURL, apiKey: 'sesame' });
    const r = await right.completions.create({ model, prompt, max_tokens: 2, temperature: 0 });
    assert.equal(r.usage.completion_tokens, 2);
    const wrong = new OpenAI({ baseURL: keyed.baseURL, apiKey: 'open sesame' });
    await assert.rejects(wrong.models.list(), OpenAI.AuthenticationError);
    // Health needs no key.
    assert.equal((await fetch(`${keyed.origin}/health`)).status, 200);
  } finally {
    keyed.close();
  }
});
