// Copies the default model into public/ so the page (and its weight cache) can fetch it by URL.
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const source = join(root, 'src', 'default_model');
const target = join(root, 'www', 'public', 'models', 'default');
if (!existsSync(join(source, 'config.json'))) {
  throw new Error(`no default model at ${source}`);
}
rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
for (const name of readdirSync(source)) {
  if (name.endsWith('.json') || name.endsWith('.safetensors')) {
    cpSync(join(source, name), join(target, name));
  }
}
console.log(`default model copied to ${target}`);
