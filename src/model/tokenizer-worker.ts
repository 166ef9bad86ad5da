// Tokenizer worker entry: encodes, decodes and renders chat templates for the edge, so a long
// prompt, whose BPE costs time in proportion to its length, never stalls the main thread's event
// loop. Structured-output constraints compile here too: building a schema's automaton can take
// longer than the event loop may ever block (figures: docs/benchmark.md, "Figures behind the
// code" for BPE, "Structured outputs" for compile times).
import { parentPort, workerData } from 'node:worker_threads';
import { ChatRenderer } from './chat-template.js';
import { loadTokenizer } from './tokenizer.js';
import { encodeChat, type CodecReply, type CodecRequest, type CodecWorkerData } from './tokenizer-thread.js';
import { ConstraintCompiler } from '../structured/constraint.js';

const port = parentPort!;
const post = (msg: CodecReply) => port.postMessage(msg);

try {
  const data = workerData as CodecWorkerData;
  const tokenizer = await loadTokenizer(data.modelDir);
  const renderer = new ChatRenderer(data.chatTemplate);
  const compiler = new ConstraintCompiler();
  port.on('message', (msg: CodecRequest) => {
    try {
      if (msg.op === 'encode') post({ type: 'result', id: msg.id, result: msg.texts.map((t) => tokenizer.encode(t)) });
      else if (msg.op === 'decode') post({ type: 'result', id: msg.id, result: msg.lists.map((ids) => tokenizer.decode(ids)) });
      else if (msg.op === 'chat') post({ type: 'result', id: msg.id, result: encodeChat(tokenizer, renderer, msg.request) });
      else post({ type: 'result', id: msg.id, result: compiler.compile(msg.spec) });
    } catch (err) {
      post({ type: 'failed', id: msg.id, message: (err as Error).message });
    }
  });
  post({ type: 'ready' });
} catch (err) {
  post({ type: 'fatal', message: (err as Error).message });
}
