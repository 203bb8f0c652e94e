// The model lives here, off the main thread, so the page stays responsive while it loads and
// generates. Messages in: load, loadFiles, generate, chat, abort, logits. Messages out: progress,
// loaded, token, chunk, done, lens, error.
import init, { LayerSkip } from 'layerskip';

let model = null;
let controller = null;
const ready = init();

function post(message) {
  self.postMessage(message);
}

async function handle(message) {
  await ready;
  const onProgress = (phase, done, total) => post({ type: 'progress', phase, done, total });
  switch (message.type) {
    case 'load':
    case 'loadFiles': {
      model = null;
      const options = { onProgress, device: message.device || 'auto' };
      model = message.type === 'load'
        ? await LayerSkip.fromUrl(message.url, options)
        : await LayerSkip.fromFiles(message.files, options);
      // wgpu's web backend does not know the adapter's name; the browser does.
      const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
      const gpu = adapter && adapter.info ? adapter.info : {};
      post({ type: 'loaded', info: { ...model.info(), gpu: { vendor: gpu.vendor, architecture: gpu.architecture, description: gpu.description } } });
      break;
    }
    case 'generate': {
      if (!model) throw new Error('no model loaded');
      controller = new AbortController();
      const result = await model.generate(message.prompt, {
        ...message.options,
        signal: controller.signal,
        onToken: (t) => post({ type: 'token', id: message.id, ...t }),
      });
      post({ type: 'done', id: message.id, result });
      break;
    }
    case 'chat': {
      // OpenAI's chat API, streamed: every chunk goes to the page as it comes.
      if (!model) throw new Error('no model loaded');
      controller = new AbortController();
      const stream = await model.chat.completions.create(
        { ...message.options, messages: message.messages, stream: true },
        { signal: controller.signal },
      );
      for await (const chunk of stream) post({ type: 'chunk', id: message.id, chunk });
      const { choices: [choice], usage, stats } = await stream.finalChatCompletion();
      post({ type: 'done', id: message.id, result: { text: choice.message.content, finish_reason: choice.finish_reason, usage, stats } });
      break;
    }
    case 'abort':
      if (controller) controller.abort();
      break;
    case 'logits': {
      if (!model) throw new Error('no model loaded');
      post({ type: 'lens', lens: await model.logits(message.prompt, 5) });
      break;
    }
  }
}

self.onmessage = (event) => {
  handle(event.data).catch((e) => post({ type: 'error', id: event.data.id, message: String(e && e.message ? e.message : e) }));
};
