import { defineConfig } from 'vite';

export default defineConfig({
  // The wasm package fetches its .wasm next to its JS; keep Vite from pre-bundling it away.
  optimizeDeps: { exclude: ['layerskip'] },
  worker: { format: 'es' },
  server: { host: '127.0.0.1', fs: { allow: ['..'] } },
  preview: { host: '127.0.0.1' },
});
