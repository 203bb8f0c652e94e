// End-to-end test of the demo page: serves the built page (www/dist) on 127.0.0.1, drives
// Debian's Chromium through it with playwright-core, loads the default model, generates greedily
// with both strategies, checks both texts equal the native CLI's greedy output for the same prompt,
// checks that a reload takes the weights from the Cache API,
// and saves screenshots (desktop and phone size) next to the build.
//
// Needs: `npm run build` done, the CLI built (LAYERSKIP_BIN, default target/release/layerskip), /usr/bin/chromium.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, statSync } from 'node:fs';
import http from 'node:http';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const www = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(www, '..');
const dist = join(www, 'dist');
const prompt = 'def fibonacci(n):';
const maxTokens = 24;

function fail(message) {
  console.error(`e2e: FAIL: ${message}`);
  process.exitCode = 1;
}

// What the native binary produces for the same prompt: the reference the page must match.
const cli = process.env.LAYERSKIP_BIN || join(root, 'target', 'release', 'layerskip');
// No --model: the binary's embedded default model, the same files the page loads.
const native = JSON.parse(execFileSync(cli, ['generate', '--prompt', prompt, '--max-new-tokens', String(maxTokens), '--json'],
  { encoding: 'utf8' }));
console.log(`native CLI greedy text: ${JSON.stringify(native.text)}`);

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json', '.svg': 'image/svg+xml' };
const server = http.createServer((req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  let file = join(dist, path);
  if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
  if (!file.startsWith(dist) || !existsSync(file)) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream', 'content-length': statSync(file).size });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  page.on('console', (m) => console.log(`page: ${m.text()}`));
  page.on('pageerror', (e) => fail(`page error: ${e.message}`));
  await page.goto(url);
  const settle = () => page.waitForFunction(() => ['ready', 'done', 'error'].includes(document.getElementById('status').dataset.state),
    null, { timeout: 300_000 });
  await settle();
  const state = await page.$eval('#status', (e) => [e.dataset.state, e.textContent]);
  if (state[0] === 'error') throw new Error(`model did not load: ${state[1]}`);
  console.log(`loaded: ${await page.$eval('#model-info', (e) => e.textContent)}`);

  await page.fill('#prompt', prompt);
  await page.fill('#max-tokens', String(maxTokens));
  await page.fill('#temperature', '0');
  // "Compare" generates autoregressively, then self-speculatively, on the same prompt.
  await page.click('#compare');
  await settle();
  const [state2, message] = await page.$eval('#status', (e) => [e.dataset.state, e.textContent]);
  if (state2 !== 'done') throw new Error(`generation failed: ${message}`);
  console.log(`self-speculative: ${await page.$eval('#stats', (e) => e.textContent)}`);
  console.log(`compare: ${await page.$eval('#compare-result', (e) => e.textContent)}`);
  const text = await page.$eval('#output', (e) => e.dataset.text);
  if (text !== native.text) fail(`self-speculative text ${JSON.stringify(text)} differs from the native CLI's`);
  if ((await page.$eval('#compare-result', (e) => e.dataset.same)) !== 'true') fail('autoregressive and self-speculative text differ');
  await page.click('#lens');
  await settle();
  const rows = await page.$$eval('#lens-table tr', (r) => r.length);
  if (rows < 2) fail('the logit lens table is empty');
  await page.screenshot({ path: join(dist, 'e2e-screenshot.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(dist, 'e2e-phone.png'), fullPage: true });

  // A reload must read the weights from the Cache API, not the network.
  let weightRequests = 0;
  page.on('request', (r) => { if (r.url().endsWith('.safetensors')) weightRequests += 1; });
  await page.reload();
  await settle();
  if ((await page.$eval('#status', (e) => e.dataset.state)) !== 'ready') fail('the model did not load again after a reload');
  if (weightRequests > 0) fail(`a reload fetched weights ${weightRequests} time(s) instead of using the cache`);
  console.log(`reload: ${weightRequests} weight requests (served from the Cache API)`);

  console.log(`screenshots: ${join(dist, 'e2e-screenshot.png')} ${join(dist, 'e2e-phone.png')}`);
} catch (e) {
  fail(e.message);
} finally {
  await browser.close();
  server.close();
}
console.log(process.exitCode ? 'e2e: 0 passed, 1 failed' : 'e2e: 1 passed, 0 failed');
