// End-to-end test of the demo page: serves the built page (www/dist) on 127.0.0.1 and drives
// Debian's Chromium through it with playwright-core.
//
// With WebGPU (--enable-unsafe-webgpu, SwiftShader): "auto" chooses the CPU backend (SwiftShader
// is software); then WebGPU chosen explicitly generates greedily with both strategies, and both
// texts must equal the native CLI's; the logit lens fills its table; a q4 checkpoint written by
// `layerskip quantize` loads by URL; a hostile shard index is refused without fetching the file
// it points at; a reload takes the weights from the Cache API. Screenshots (desktop, phone).
// Without WebGPU (no flag): the page falls back to the wasm CPU backend and generates the same
// text, and chats the same; its tokens/s is printed; Stop ends a long generation early. The page
// calls `layerskip serve --cors-origin` with fetch.
//
// Needs: `npm run build` done, the CLI built (LAYERSKIP_BIN, default target/release/layerskip), /usr/bin/chromium.
import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const www = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(www, '..');
const dist = join(www, 'dist');
const prompt = 'def fibonacci(n):';
const maxTokens = 24;
let failures = 0;

function fail(message) {
  console.error(`e2e: FAIL: ${message}`);
  failures += 1;
}

// What the native binary produces for the same prompt: the reference the page must match.
const cli = process.env.LAYERSKIP_BIN || join(root, 'target', 'release', 'layerskip');
// No --model: the binary's embedded default model, the same files the page loads.
const native = JSON.parse(execFileSync(cli, ['generate', '--prompt', prompt, '--max-new-tokens', String(maxTokens), '--json'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
console.log(`native CLI greedy text: ${JSON.stringify(native.text)}`);
// The chat tab's first reply, as the CLI gives it for the same one-message conversation.
const chatMessage = 'Write a function that sorts a list.';
const chatTokens = 16;
const nativeChat = JSON.parse(execFileSync(cli, ['generate', '--chat', '--prompt', chatMessage, '--max-new-tokens', String(chatTokens), '--json'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
console.log(`native CLI chat reply: ${JSON.stringify(nativeChat.text)}`);

// A q4 copy of the default model, and a hostile folder whose index points outside it.
const models = join(dist, 'models');
rmSync(join(models, 'default-q4'), { recursive: true, force: true });
execFileSync(cli, ['quantize', '--format', 'q4', '--out', join(models, 'default-q4')], { stdio: 'ignore' });
// A GGUF file (tests/fixtures/gguf/tiny_mixed.gguf: every GGUF tensor type) served as one file.
cpSync(join(www, '..', 'tests', 'fixtures', 'gguf', 'tiny_mixed.gguf'), join(models, 'tiny_mixed.gguf'));
const hostile = join(models, 'hostile');
rmSync(hostile, { recursive: true, force: true });
mkdirSync(hostile, { recursive: true });
for (const name of ['config.json', 'tokenizer.json']) cpSync(join(models, 'default', name), join(hostile, name));
writeFileSync(join(hostile, 'model.safetensors.index.json'),
  JSON.stringify({ weight_map: { 'model.embed_tokens.weight': '../default/model.safetensors' } }));

const { url, requests, close } = await serve(dist);

const quiet = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic'];

async function open(browser, viewport) {
  const page = await browser.newPage({ viewport });
  page.on('console', (m) => console.log(`page: ${m.text()}`));
  page.on('pageerror', (e) => fail(`page error: ${e.message}`));
  await page.goto(url);
  return page;
}

const settle = (page) => page.waitForFunction(
  () => ['ready', 'done', 'error'].includes(document.getElementById('status').dataset.state), null, { timeout: 600_000 });

async function state(page) {
  return page.$eval('#status', (e) => [e.dataset.state, e.textContent]);
}

async function load(page, device, modelUrl) {
  await page.selectOption('#device', device);
  if (modelUrl) {
    await page.fill('#url', modelUrl);
    await page.click('#load-url');
  } else {
    await page.click('#load-default');
  }
  await settle(page);
  return state(page);
}

// "Compare" generates autoregressively, then self-speculatively (with `auto` exit layer and
// depth when asked); both must equal the CLI's text.
async function compare(page, label, auto = false) {
  await page.setChecked('#exit-auto', auto);
  await page.setChecked('#speculations-auto', auto);
  await page.fill('#prompt', prompt);
  await page.fill('#max-tokens', String(maxTokens));
  await page.fill('#temperature', '0');
  await page.click('#compare');
  await settle(page);
  const [s, message] = await state(page);
  if (s !== 'done') throw new Error(`${label}: generation failed: ${message}`);
  console.log(`${label}: ${await page.$eval('#stats', (e) => e.textContent)}`);
  console.log(`${label}: ${await page.$eval('#compare-result', (e) => e.textContent)}`);
  const text = await page.$eval('#output', (e) => e.dataset.text);
  if (text !== native.text) fail(`${label}: self-speculative text ${JSON.stringify(text)} differs from the native CLI's`);
  if ((await page.$eval('#compare-result', (e) => e.dataset.same)) !== 'true') fail(`${label}: autoregressive and self-speculative text differ`);
}

// The chat tab: a two-turn conversation, self-speculative and greedy. The first reply must equal
// the CLI's for the same conversation, with accepted drafts coloured; the second turn keeps the
// first turn's KV entries.
async function chatTab(page, label) {
  await page.selectOption('#strategy', 'self-speculative');
  await page.setChecked('#exit-auto', false);
  await page.setChecked('#speculations-auto', false);
  await page.fill('#max-tokens', String(chatTokens));
  await page.fill('#temperature', '0');
  await page.click('#tab-chat');
  await page.click('#chat-reset');
  const turn = async (message) => {
    await page.fill('#chat-input', message);
    await page.click('#chat-send');
    await settle(page);
    const [s, why] = await state(page);
    if (s !== 'done') throw new Error(`${label} chat: ${why}`);
    return page.$eval('#chat-log .message.assistant:last-child', (e) => e.dataset.text);
  };
  const first = await turn(chatMessage);
  if (first !== nativeChat.text) fail(`${label} chat: reply ${JSON.stringify(first)} differs from the CLI's ${JSON.stringify(nativeChat.text)}`);
  if ((await page.$$('#chat-log .accepted')).length === 0) fail(`${label} chat: no accepted draft shown`);
  await turn('Now in reverse.');
  const cached = Number(await page.$eval('#chat-stats', (e) => e.dataset.cached));
  if (!(cached > 0)) fail(`${label} chat: the second turn kept no KV entries`);
  console.log(`${label} chat: ${await page.$eval('#chat-stats', (e) => e.textContent)}`);
}

// Stop during a long greedy generation (this model writes 400 tokens without an EOS): the
// generation ends early, cancelled, with the text so far.
async function stopEarly(page, label) {
  const budget = 400;
  await page.selectOption('#strategy', 'self-speculative');
  await page.fill('#prompt', prompt);
  await page.fill('#max-tokens', String(budget));
  await page.fill('#temperature', '0');
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('output').textContent.length > 0, null, { timeout: 60_000 });
  await page.click('#stop');
  await settle(page);
  const stats = await page.$eval('#stats', (e) => e.textContent);
  const tokens = Number(/(\d+) tokens/.exec(stats)?.[1]);
  if (!stats.includes('stop: cancelled') || !(tokens < budget)) fail(`${label}: Stop did not end the generation: ${stats}`);
  console.log(`${label} stopped: ${stats}`);
}

// `layerskip serve --cors-origin` with this page's origin: the page's fetch (preflighted: JSON
// and an API key) gets the CLI's chat reply; from a server without the flag the browser keeps
// the answer from the page.
async function serverFromPage(page) {
  const start = (args) => new Promise((resolve, reject) => {
    const child = spawn(cli, ['serve', '--port', '0', '--api-key', 'e2e', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let printed = '';
    child.stderr.on('data', (d) => {
      printed += d;
      const address = /http:\/\/(\S+)\/v1/.exec(printed);
      if (address) resolve({ child, base: `http://${address[1]}` });
    });
    child.on('exit', (code) => reject(new Error(`layerskip serve exited (${code}): ${printed}`)));
  });
  const ask = (base) => page.evaluate(async ({ base, message, tokens }) => {
    try {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer e2e' },
        body: JSON.stringify({ messages: [{ role: 'user', content: message }], max_tokens: tokens, temperature: 0 }),
      });
      return { status: response.status, reply: (await response.json()).choices?.[0]?.message?.content };
    } catch (e) {
      return { error: String(e) };
    }
  }, { base, message: chatMessage, tokens: chatTokens });
  const allowed = await start(['--cors-origin', new URL(url).origin]);
  const closed = await start([]);
  try {
    const answer = await ask(allowed.base);
    if (answer.reply !== nativeChat.text) fail(`a page calling serve --cors-origin: ${JSON.stringify(answer)}`);
    else console.log(`serve --cors-origin ${new URL(url).origin}: the page's fetch got the CLI's reply`);
    const refused = await ask(closed.base);
    if (!refused.error) fail(`a page read an answer from a server without --cors-origin: ${JSON.stringify(refused)}`);
    else console.log(`serve without --cors-origin: the page's fetch failed (${refused.error})`);
  } finally {
    allowed.child.kill();
    closed.child.kill();
  }
}

async function withWebGpu() {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--enable-unsafe-webgpu', ...quiet] });
  try {
    const page = await open(browser, { width: 1100, height: 1400 });
    await settle(page);
    const [first, message] = await state(page);
    if (first === 'error') throw new Error(`model did not load: ${message}`);
    const auto = await page.$eval('#model-info', (e) => [e.dataset.backend, e.textContent]);
    console.log(`auto: ${auto[1]}`);
    if (auto[0] !== 'cpu') fail(`"auto" on SwiftShader should choose the CPU, chose ${auto[0]}`);

    const [s] = await load(page, 'gpu');
    if (s !== 'ready') throw new Error(`the model did not load on WebGPU: ${(await state(page))[1]}`);
    console.log(`WebGPU: ${await page.$eval('#model-info', (e) => e.textContent)}`);
    await compare(page, 'WebGPU');
    await stopEarly(page, 'WebGPU');
    await page.click('#lens');
    await settle(page);
    if ((await page.$$eval('#lens-table tr', (r) => r.length)) < 2) fail('the logit lens table is empty');
    await page.screenshot({ path: join(dist, 'e2e-screenshot.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: join(dist, 'e2e-phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1100, height: 1400 });
    await chatTab(page, 'WebGPU');
    await page.screenshot({ path: join(dist, 'e2e-chat.png'), fullPage: true });
    await page.click('#tab-generate');

    // A 4-bit checkpoint by URL, as a site would serve one.
    const [q4] = await load(page, 'gpu', `${url}models/default-q4/`);
    const q4info = await page.$eval('#model-info', (e) => e.textContent);
    if (q4 !== 'ready' || !q4info.includes('weights q4')) fail(`the q4 checkpoint did not load: ${(await state(page))[1]} ${q4info}`);
    else console.log(`q4 by URL: ${q4info}`);

    // A GGUF file by URL: weights, tokenizer and template from the one file.
    const [gguf] = await load(page, 'gpu', `${url}models/tiny_mixed.gguf`);
    const ggufInfo = await page.$eval('#model-info', (e) => e.textContent);
    if (gguf !== 'ready' || !ggufInfo.includes('q4_k')) fail(`the GGUF file did not load: ${(await state(page))[1]} ${ggufInfo}`);
    else console.log(`GGUF by URL: ${ggufInfo}`);

    // A hostile index: refused by name, and the file it names is never requested.
    const before = requests.length;
    const [h, why] = await load(page, 'gpu', `${url}models/hostile/`);
    const fetched = requests.slice(before).filter((r) => r.includes('default/model.safetensors'));
    if (h !== 'error' || !why.includes('not a plain file name')) fail(`the hostile index was not refused: ${why}`);
    if (fetched.length > 0) fail(`the hostile index made the page fetch ${fetched}`);
    console.log(`hostile index: ${why}`);

    // A reload must read the weights from the Cache API, not the network.
    let weightRequests = 0;
    page.on('request', (r) => { if (r.url().endsWith('.safetensors')) weightRequests += 1; });
    await page.reload();
    await settle(page);
    if ((await state(page))[0] !== 'ready') fail('the model did not load again after a reload');
    if (weightRequests > 0) fail(`a reload fetched weights ${weightRequests} time(s) instead of using the cache`);
    console.log(`reload: ${weightRequests} weight requests (served from the Cache API)`);
    console.log(`screenshots: ${join(dist, 'e2e-screenshot.png')} ${join(dist, 'e2e-phone.png')} ${join(dist, 'e2e-chat.png')}`);
  } finally {
    await browser.close();
  }
}

async function withoutWebGpu() {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: quiet });
  try {
    const page = await open(browser, { width: 1100, height: 1400 });
    await settle(page);
    const [s, message] = await state(page);
    if (s !== 'ready') throw new Error(`without WebGPU the model did not load: ${message}`);
    const info = await page.$eval('#model-info', (e) => [e.dataset.backend, e.textContent]);
    console.log(`without WebGPU: ${info[1]}`);
    if (info[0] !== 'cpu') fail(`without WebGPU the page should run on the CPU, ran on ${info[0]}`);
    await compare(page, 'wasm CPU');
    await compare(page, 'wasm CPU, auto exit layer and depth', true);
    if (!(await page.$eval('#stats', (e) => e.textContent)).includes('auto exit layers')) fail('auto stats missing from the page');
    await chatTab(page, 'wasm CPU');
    await page.click('#tab-generate');
    await stopEarly(page, 'wasm CPU');
    await serverFromPage(page);
    const [g, why] = await load(page, 'gpu');
    if (g !== 'error' || !why.includes('WebGPU is not available')) fail(`asking for WebGPU without it: ${why}`);
    console.log(`device gpu without WebGPU: ${why}`);
  } finally {
    await browser.close();
  }
}

try {
  await withWebGpu();
  await withoutWebGpu();
} catch (e) {
  fail(e.message);
} finally {
  close();
}
console.log(failures ? `e2e: ${failures} failed` : 'e2e: all checks passed');
process.exitCode = failures ? 1 : 0;
