// Starts `layerskip serve` on a free loopback port (the embedded model on the CPU backend) and
// runs the CLI for reference outputs. LAYERSKIP_BIN names the binary (default: the debug build).
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const bin = process.env.LAYERSKIP_BIN || join(root, 'target', 'debug', 'layerskip');

export function startServer(args = [], env = {}) {
  const child = spawn(bin, ['serve', '--device', 'cpu', '--port', '0', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LAYERSKIP_API_KEY: '', ...env },
  });
  let log = '';
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`layerskip serve exited (${code}): ${log}`)));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text) => {
      log += text;
      const found = log.match(/http:\/\/([0-9.]+:[0-9]+)\/v1/);
      if (found) {
        child.removeAllListeners('exit');
        resolve({
          origin: `http://${found[1]}`,
          baseURL: `http://${found[1]}/v1`,
          pid: child.pid,
          // Resident memory of the server process, in bytes (Linux).
          rss: () => Number(readFileSync(`/proc/${child.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/)[1]) * 1024,
          close: () => child.kill(),
        });
      }
    });
  });
}

// `layerskip generate ... --json` on the CPU: the reference the server's answers must equal.
export function generate(args) {
  return JSON.parse(execFileSync(bin, ['generate', '--device', 'cpu', '--json', ...args],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
}
