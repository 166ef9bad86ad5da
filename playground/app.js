// gpt2-serve playground: several completions side by side, streamed over ONE websocket
// (/v1/completions/ws, protocol in docs/api.md). Plain browser JavaScript, no build step.
//
// Browsers cannot set an Authorization header on a websocket, so an API key travels as the
// subprotocol `gpt2-serve.bearer.<base64url(key)>`, offered beside `gpt2-serve` (the one the
// server selects). The key lives in this module's memory only.

const WS_PROTOCOL = 'gpt2-serve';
const WS_BEARER_PREFIX = 'gpt2-serve.bearer.';
const TOP_LOGPROBS = 3;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  model: $('model'),
  keyForm: $('key-form'),
  keyInput: $('api-key'),
  keyError: $('key-error'),
  form: $('prompt-form'),
  prompt: $('prompt'),
  maxTokens: $('max-tokens'),
  temperature: $('temperature'),
  topP: $('top-p'),
  seed: $('seed'),
  count: $('streams-count'),
  generate: $('generate'),
  stopAll: $('stop-all'),
  streams: $('streams'),
  template: $('stream-template'),
};

let apiKey = null;
let model = null;
let socket = null;
let run = 0;
/** The streams of the latest run, by request id. */
let streams = new Map();

function say(text) {
  ui.status.textContent = text;
}

function base64url(text) {
  let bin = '';
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function authHeaders() {
  return apiKey ? { authorization: `Bearer ${apiKey}` } : {};
}

/** Asks the API for the served model; on 401 asks the user for the key. */
async function loadModel() {
  let res;
  try {
    res = await fetch('/v1/models', { headers: authHeaders() });
  } catch {
    say('Cannot reach the server.');
    return false;
  }
  if (res.status === 401) {
    ui.keyForm.hidden = false;
    ui.keyError.textContent = apiKey ? 'That key was refused.' : '';
    say('API key required.');
    ui.keyInput.focus();
    apiKey = null;
    return false;
  }
  if (res.status === 503) {
    say('The model is loading…');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return loadModel();
  }
  if (!res.ok) {
    say(`The server answered ${res.status} for /v1/models.`);
    return false;
  }
  const body = await res.json();
  model = body.data[0].id;
  ui.model.textContent = `model: ${model}`;
  ui.keyForm.hidden = true;
  return true;
}

function connect() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/completions/ws`;
  const protocols = apiKey ? [WS_PROTOCOL, WS_BEARER_PREFIX + base64url(apiKey)] : [WS_PROTOCOL];
  const ws = new WebSocket(url, protocols);
  socket = ws;
  say('Connecting…');
  let opened = false;
  ws.addEventListener('open', () => {
    if (socket !== ws) return;
    opened = true;
    say('Connected: one websocket, many streams.');
    ui.generate.disabled = false;
  });
  ws.addEventListener('message', (event) => {
    if (socket === ws) onFrame(JSON.parse(event.data));
  });
  ws.addEventListener('close', () => {
    if (socket !== ws) return;
    socket = null;
    ui.generate.disabled = false; // Generate reconnects
    for (const s of streams.values()) if (s.running) s.finish('disconnected', 'The connection closed.');
    updateStopAll();
    if (opened) say('Disconnected. Generate reconnects.');
    else {
      say('The websocket was refused.');
      void loadModel(); // asks for the key again if that was why
    }
  });
}

function whenOpen() {
  if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
  if (!socket) connect();
  const ws = socket;
  return new Promise((resolve, reject) => {
    ws.addEventListener('open', () => resolve(ws), { once: true });
    ws.addEventListener('close', () => reject(new Error('The websocket closed before it opened.')), { once: true });
  });
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function onFrame(frame) {
  const stream = streams.get(frame.id);
  if (frame.type === 'completion.chunk' && stream) stream.chunk(frame.choices[0]);
  else if (frame.type === 'completion.done' && stream) {
    stream.finish(frame.cancelled ? 'cancelled' : `done (${stream.finishReason ?? 'stop'})`);
  } else if (frame.type === 'error') {
    if (stream) stream.finish('error', frame.error.message);
    else if (frame.id === null) say(`Server: ${frame.error.message}`);
  }
  updateStopAll();
  if (stream && !stream.running && ![...streams.values()].some((s) => s.running)) say('All streams finished.');
}

function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  return p >= 10 ? `${p.toFixed(0)}%` : p >= 0.1 ? `${p.toFixed(1)}%` : `${p.toExponential(0)}%`;
}

function bucket(logprob) {
  const p = Math.exp(logprob);
  return p >= 0.5 ? 'p-hi' : p >= 0.1 ? 'p-mid' : p >= 0.01 ? 'p-lo' : 'p-vlo';
}

function describe(token, logprob, top) {
  const alternatives = Object.entries(top ?? {})
    .filter(([t]) => t !== token)
    .sort((a, b) => b[1] - a[1])
    .map(([t, lp]) => `${JSON.stringify(t)} ${percent(lp)}`);
  const head = `${JSON.stringify(token)}: ${percent(logprob)}`;
  return alternatives.length ? `${head}; also ${alternatives.join(', ')}` : head;
}

class Stream {
  constructor(id, index, request) {
    this.id = id;
    this.request = request;
    this.running = true;
    this.tokens = 0;
    this.sentAt = performance.now();
    this.firstAt = null;
    this.lastAt = null;
    this.finishReason = null;
    this.active = -1;
    const el = ui.template.content.firstElementChild.cloneNode(true);
    this.el = el;
    const title = `Stream ${index + 1}`;
    el.querySelector('.stream-title').textContent = title;
    el.setAttribute('aria-label', title);
    this.state = el.querySelector('.state');
    this.stopButton = el.querySelector('.stop');
    this.stopButton.setAttribute('aria-label', `Stop stream ${index + 1}`);
    this.stopButton.addEventListener('click', () => this.stop());
    this.ttft = el.querySelector('.ttft');
    this.tps = el.querySelector('.tps');
    this.count = el.querySelector('.count');
    this.output = el.querySelector('.output');
    this.output.setAttribute('aria-label', `${title} output; arrow keys inspect tokens`);
    this.output.querySelector('.prompt-echo').textContent = request.prompt;
    this.generated = el.querySelector('.generated');
    this.inspect = el.querySelector('.inspect');
    this.error = el.querySelector('.error');
    this.output.addEventListener('mouseover', (e) => {
      if (e.target.classList?.contains('tok')) this.show(e.target);
    });
    this.output.addEventListener('keydown', (e) => this.onKey(e));
    this.setState('waiting');
    el.setAttribute('aria-busy', 'true');
  }

  setState(text) {
    this.state.textContent = text;
    this.el.dataset.state = text;
  }

  chunk(choice) {
    const now = performance.now();
    const lp = choice.logprobs;
    const n = lp ? lp.tokens.length : 0;
    if (choice.finish_reason) this.finishReason = choice.finish_reason;
    if (n === 0 && !choice.text) return;
    if (this.firstAt === null) {
      this.firstAt = now;
      this.ttft.textContent = `${Math.round(now - this.sentAt)} ms`;
      this.setState('streaming');
    }
    this.lastAt = now;
    this.tokens += n;
    this.count.textContent = String(this.tokens);
    if (this.tokens > 1 && now > this.firstAt) {
      this.tps.textContent = ((this.tokens - 1) / ((now - this.firstAt) / 1000)).toFixed(1);
    }
    this.append(choice.text, lp);
  }

  /** One span per token when the chunk's text is its tokens; else one span for the chunk (text held back or a split character). */
  append(text, lp) {
    const frag = document.createDocumentFragment();
    if (lp && lp.tokens.join('') === text) {
      lp.tokens.forEach((token, i) => frag.append(this.span(token, describe(token, lp.token_logprobs[i], lp.top_logprobs[i]), lp.token_logprobs[i])));
    } else if (text) {
      const sum = lp ? lp.token_logprobs.reduce((a, b) => a + (b ?? 0), 0) : null;
      const info = lp && lp.tokens.length ? lp.tokens.map((t, i) => describe(t, lp.token_logprobs[i], lp.top_logprobs[i])).join(' | ') : 'no probability';
      frag.append(this.span(text, info, sum));
    }
    this.generated.append(frag);
  }

  span(text, info, logprob) {
    const s = document.createElement('span');
    s.className = `tok ${logprob === null ? '' : bucket(logprob)}`;
    s.textContent = text;
    s.title = info;
    return s;
  }

  show(span) {
    const all = this.generated.children;
    if (this.active >= 0 && all[this.active]) all[this.active].classList.remove('active');
    this.active = Array.prototype.indexOf.call(all, span);
    span.classList.add('active');
    this.inspect.textContent = span.title;
  }

  onKey(e) {
    const all = this.generated.children;
    if (all.length === 0) return;
    const moves = { ArrowRight: this.active + 1, ArrowLeft: this.active - 1, Home: 0, End: all.length - 1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const next = Math.min(all.length - 1, Math.max(0, moves[e.key]));
    this.show(all[next]);
  }

  stop() {
    if (!this.running) return;
    this.stopButton.disabled = true;
    this.setState('stopping');
    send({ type: 'completion.cancel', id: this.id });
  }

  finish(state, message) {
    if (!this.running) return;
    this.running = false;
    this.stopButton.disabled = true;
    this.el.setAttribute('aria-busy', 'false');
    this.setState(state);
    if (message) {
      this.error.hidden = false;
      this.error.textContent = message;
    }
  }
}

function updateStopAll() {
  ui.stopAll.disabled = ![...streams.values()].some((s) => s.running);
}

function numberOf(input) {
  return input.value === '' ? null : Number(input.value);
}

async function generate() {
  if (!ui.form.reportValidity()) return;
  for (const s of streams.values()) s.stop();
  run += 1;
  streams = new Map();
  ui.streams.replaceChildren();
  const count = numberOf(ui.count);
  const seed = numberOf(ui.seed);
  const base = {
    model,
    prompt: ui.prompt.value,
    max_tokens: numberOf(ui.maxTokens),
    temperature: numberOf(ui.temperature),
    top_p: numberOf(ui.topP),
    logprobs: TOP_LOGPROBS,
  };
  let ws;
  try {
    ws = await whenOpen();
  } catch (err) {
    say(err.message);
    return;
  }
  for (let i = 0; i < count; i++) {
    const id = `r${run}-s${i + 1}`;
    const request = { ...base, ...(seed === null ? {} : { seed: seed + i }) };
    const stream = new Stream(id, i, request);
    streams.set(id, stream);
    ui.streams.append(stream.el);
    ws.send(JSON.stringify({ type: 'completion.create', id, ...request }));
  }
  updateStopAll();
  say(`Generating ${count} stream${count === 1 ? '' : 's'} on one websocket…`);
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  void generate();
});
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') for (const s of streams.values()) s.stop();
});
ui.stopAll.addEventListener('click', () => {
  for (const s of streams.values()) s.stop();
});
ui.keyForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  apiKey = ui.keyInput.value;
  ui.keyInput.value = '';
  if (await loadModel()) connect();
});

if (await loadModel()) connect();
