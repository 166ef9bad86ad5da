// deploy/gateway/ against the server it routes to, offline (no cluster was run): the manifests
// parse, carry the fields the Gateway API Inference Extension requires, point at each other and
// at deploy/deployment.yaml's pods, and every metric the endpoint picker is configured to read is
// on a running server's /metrics with the protocol's type and semantics, checked under load.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import request from 'supertest';
import { parseAllDocuments } from 'yaml';
import { SETTINGS } from '../src/config.js';
import { ROOT } from './helpers/monitoring.js';
import { MODEL, serveTest, waitFor } from './helpers/serving.js';

type Parsed = any;

const DEFAULT_PORT: number = SETTINGS.port.schema.parse(undefined);

function readYaml(rel: string): Parsed[] {
  const docs = parseAllDocuments(readFileSync(path.join(ROOT, rel), 'utf8'), { version: '1.1' });
  return docs.map((doc) => {
    assert.deepEqual(doc.errors.map(String), [], `${rel}: YAML errors`);
    assert.deepEqual(doc.warnings.map(String), [], `${rel}: YAML warnings`);
    return doc.toJS();
  });
}

function only(objects: Parsed[], kind: string): Parsed {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `exactly one ${kind}`);
  return found[0];
}

function gateway() {
  const kustomization = readYaml('deploy/gateway/Kustomization')[0];
  const objects = (kustomization.resources as string[]).flatMap((f) => readYaml(`deploy/gateway/${f}`));
  for (const o of objects) {
    assert.equal(typeof o.apiVersion, 'string');
    assert.equal(typeof o.kind, 'string');
    assert.match(o.metadata?.name ?? '', /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, `${o.kind} name`);
  }
  return objects;
}

/** The endpoint picker's metric flags: flag -> metric name. */
function pickerMetrics(objects: Parsed[]): Map<string, string> {
  const epp = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'gpt2-serve-epp');
  const args: string[] = epp.spec.template.spec.containers[0].args;
  const flags = new Map<string, string>();
  for (const a of args) {
    const m = /^--([a-z-]+-metric)=(.*)$/.exec(a);
    if (m) flags.set(m[1]!, m[2]!);
  }
  return flags;
}

test('deploy/gateway: an InferencePool of deploy/deployment.yaml\'s pods, its endpoint picker, and an HTTPRoute to the pool', () => {
  const objects = gateway();
  const pool = only(objects, 'InferencePool');
  assert.equal(pool.apiVersion, 'inference.networking.k8s.io/v1');
  const deployment = readYaml('deploy/deployment.yaml')[0];
  const podLabels = deployment.spec.template.metadata.labels;
  for (const [k, v] of Object.entries(pool.spec.selector.matchLabels)) assert.equal(podLabels[k], v, `pool selector ${k} must match the server pods`);
  const container = deployment.spec.template.spec.containers[0];
  assert.deepEqual(pool.spec.targetPorts, [{ number: container.ports[0].containerPort }]);
  assert.equal(container.ports[0].containerPort, DEFAULT_PORT);

  // The picker the pool names: a Service on the ext-proc port, selecting the picker's pods.
  const ref = pool.spec.endpointPickerRef;
  assert.ok(['FailOpen', 'FailClose'].includes(ref.failureMode));
  const service = objects.find((o) => o.kind === 'Service' && o.metadata.name === ref.name);
  assert.ok(service, `a Service named ${ref.name}`);
  assert.ok(service.spec.ports.some((p: Parsed) => p.port === ref.port.number && p.appProtocol === 'http2'), 'the ext-proc port speaks HTTP/2 (gRPC)');
  const epp = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'gpt2-serve-epp');
  for (const [k, v] of Object.entries(service.spec.selector)) assert.equal(epp.spec.template.metadata.labels[k], v);
  const c = epp.spec.template.spec.containers[0];
  assert.match(c.image, /^registry\.k8s\.io\/gateway-api-inference-extension\/epp:v\d+\.\d+\.\d+$/, 'a pinned release');
  assert.ok(c.args.includes(`--pool-name=${pool.metadata.name}`));
  assert.ok(c.args.includes(`--grpc-port=${ref.port.number}`));
  assert.equal(epp.spec.template.spec.serviceAccountName, only(objects, 'ServiceAccount').metadata.name);
  assert.ok(epp.spec.template.spec.terminationGracePeriodSeconds >= deployment.spec.template.spec.terminationGracePeriodSeconds);

  // Its config file is the ConfigMap's, and it parses as an EndpointPickerConfig whose profile
  // uses only plugins it declares.
  const configArg = c.args.find((a: string) => a.startsWith('--config-file='));
  const mount = c.volumeMounts.find((m: Parsed) => configArg.slice('--config-file='.length).startsWith(m.mountPath));
  const volume = epp.spec.template.spec.volumes.find((v: Parsed) => v.name === mount.name);
  const configMap = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === volume.configMap.name);
  const file = path.posix.basename(configArg);
  const config = parseAllDocuments(configMap.data[file])[0]!.toJS();
  assert.equal(config.kind, 'EndpointPickerConfig');
  const declared = new Set(config.plugins.map((p: Parsed) => p.name ?? p.type));
  for (const profile of config.schedulingProfiles) for (const p of profile.plugins) assert.ok(declared.has(p.pluginRef), `${p.pluginRef} is declared`);

  // The RBAC the picker needs: watch the pool and the pods.
  const rules = only(objects, 'Role').rules;
  assert.ok(rules.some((r: Parsed) => r.apiGroups.includes('inference.networking.k8s.io') && r.resources.includes('inferencepools') && r.verbs.includes('watch')));
  assert.ok(rules.some((r: Parsed) => r.apiGroups.includes('') && r.resources.includes('pods') && r.verbs.includes('watch')));

  // The route sends the API to the pool, not to a Service.
  const route = only(objects, 'HTTPRoute');
  assert.equal(route.apiVersion, 'gateway.networking.k8s.io/v1');
  assert.equal(route.spec.parentRefs[0].kind, 'Gateway');
  const backends = route.spec.rules.flatMap((r: Parsed) => r.backendRefs);
  assert.deepEqual(backends, [{ group: 'inference.networking.k8s.io', kind: 'InferencePool', name: pool.metadata.name }]);
  assert.ok(route.spec.rules.some((r: Parsed) => r.matches.some((m: Parsed) => '/v1/chat/completions'.startsWith(m.path.value))));

  assert.deepEqual(
    [...pickerMetrics(objects).keys()].sort(),
    ['cache-info-metric', 'kv-cache-usage-percentage-metric', 'lora-info-metric', 'total-queued-requests-metric', 'total-running-requests-metric'],
  );
});

/** Prometheus text exposition -> name -> {type, samples as [labels, value]}. */
function parseExposition(text: string): Map<string, { type: string; samples: Array<[string, number]> }> {
  const out = new Map<string, { type: string; samples: Array<[string, number]> }>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) out.set(type[1]!, { type: type[2]!, samples: [] });
    const sample = /^([^#\s{]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (sample) out.get(sample[1]!)?.samples.push([sample[2] ?? '', Number(sample[3])]);
  }
  return out;
}

test('every metric the endpoint picker reads is on /metrics with the protocol\'s type and meaning, under load and idle', async (t) => {
  const flags = pickerMetrics(gateway());
  const { app } = await serveTest(t, { worker: true, runner: { stepDelayMs: 15 }, engine: { maxNumSeqs: 2 } });
  const scrape = async () => parseExposition((await request(app.server).get('/metrics').expect(200)).text);
  const value = (m: Awaited<ReturnType<typeof scrape>>, name: string) => m.get(name)!.samples[0]![1];

  const load = Array.from({ length: 5 }, () =>
    request(app.server).post('/v1/chat/completions').send({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 40 }),
  );
  const settled = Promise.all(load.map((r) => r.then((res) => res.status)));
  let busy = await scrape();
  const deadline = Date.now() + 5000;
  while (!(value(busy, flags.get('total-queued-requests-metric')!) >= 1 && value(busy, flags.get('total-running-requests-metric')!) === 2)) {
    assert.ok(Date.now() < deadline, 'the load never showed as 2 running and some waiting');
    await new Promise((r) => setTimeout(r, 10));
    busy = await scrape();
  }
  for (const flag of ['total-queued-requests-metric', 'total-running-requests-metric', 'kv-cache-usage-percentage-metric', 'cache-info-metric']) {
    const name = flags.get(flag)!;
    assert.equal(busy.get(name)?.type, 'gauge', `${flag}: ${name} is a gauge on /metrics`);
  }
  // Semantics: the same figures as the server's own gauges; usage a fraction, not a percentage.
  assert.equal(value(busy, flags.get('total-queued-requests-metric')!), value(busy, 'gpt2_num_requests_waiting'));
  assert.equal(value(busy, flags.get('total-running-requests-metric')!), value(busy, 'gpt2_num_sequences_running'));
  const usage = value(busy, flags.get('kv-cache-usage-percentage-metric')!);
  assert.ok(usage > 0 && usage < 1, `KV usage ${usage} is a fraction in (0, 1) while two sequences run`);
  assert.equal(usage, value(busy, 'gpt2_kv_cache_usage_ratio'));
  // The info gauge: value 1, block size and block count as labels (8192 tokens / 16 per block).
  assert.deepEqual(busy.get(flags.get('cache-info-metric')!)!.samples, [['{block_size="16",num_gpu_blocks="512"}', 1]]);
  assert.equal(flags.get('lora-info-metric'), '', 'no LoRA: the picker is told not to look for it');

  assert.deepEqual(await settled, [200, 200, 200, 200, 200]);
  await waitFor(() => app.serving.engine!.stats().running === 0, 30_000, 'idle');
  const idle = await scrape();
  for (const flag of ['total-queued-requests-metric', 'total-running-requests-metric', 'kv-cache-usage-percentage-metric']) {
    assert.equal(value(idle, flags.get(flag)!), 0, `${flag} idle`);
  }
});
