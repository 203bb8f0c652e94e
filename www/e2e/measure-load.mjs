// Measures loading a checkpoint in the demo page in headless Chromium: wall time, where it runs
// and the wasm memory the page holds afterwards. Not a test; for the figures in docs and notes.
//
//   node e2e/measure-load.mjs /path/to/model-dir [gpu|cpu|auto]
//
// Needs `npm run build` (www/dist) and /usr/bin/chromium.
import { chromium } from 'playwright-core';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const [modelDir, device = 'gpu'] = process.argv.slice(2);
if (!modelDir) {
  console.error('usage: node e2e/measure-load.mjs MODEL_DIR [gpu|cpu|auto]');
  process.exit(2);
}
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const { url, close } = await serve(dist, { '/measured/': resolve(modelDir) });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage();
  const settle = () => page.waitForFunction(
    () => ['ready', 'done', 'error'].includes(document.getElementById('status').dataset.state), null, { timeout: 1_800_000 });
  await page.goto(url);
  await settle();
  await page.selectOption('#device', device);
  await page.fill('#url', `${url}measured/`);
  const started = Date.now();
  await page.click('#load-url');
  await settle();
  const seconds = (Date.now() - started) / 1e3;
  const [state, status] = await page.$eval('#status', (e) => [e.dataset.state, e.textContent]);
  console.log(`${state === 'ready' ? 'loaded' : 'failed'} in ${seconds.toFixed(1)} s: ${status}`);
  console.log(await page.$eval('#model-info', (e) => e.textContent));
} finally {
  await browser.close();
  close();
}
