// deploy/gateway/ against the server it routes to, offline (no cluster was run): the manifests
// parse, carry the fields the Gateway API Inference Extension requires, point at each other and
// at deploy/deployment.yaml's pods, and every metric the endpoint picker is configured to read is
// on a running server's /metrics with the protocol's type and semantics, checked under load.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import request from 'supertest';
import { parseAllDocuments } from 'yaml';
import { SETTINGS } from '../src/config.js';
import { ROOT } from './helpers/monitoring.js';
import { MODEL, serveTest, waitFor } from './helpers/serving.js';

type Parsed = any;

const DEFAULT_PORT: number = SETTINGS.port.schema.parse(undefined);

/**
 * The flags the v1.0.1 picker defines (cmd/epp/runner/runner.go at that tag, and controller-runtime's
 * zap options): it exits on any other, so a flag of a later release must not slip in.
 */
const EPP_V1_0_1_FLAGS = new Set([
  'grpc-port', 'grpc-health-port', 'metrics-port', 'enable-pprof', 'pool-name', 'pool-group', 'pool-namespace', 'v', 'secure-serving',
  'health-checking', 'cert-path', 'total-queued-requests-metric', 'kv-cache-usage-percentage-metric', 'lora-info-metric',
  'refresh-metrics-interval', 'refresh-prometheus-metrics-interval', 'metrics-staleness-threshold', 'config-file', 'config-text',
  'model-server-metrics-port', 'model-server-metrics-path', 'model-server-metrics-scheme', 'model-server-metrics-https-insecure-skip-verify',
  'ha-enable-leader-election', 'zap-devel', 'zap-encoder', 'zap-log-level', 'zap-stacktrace-level', 'zap-time-encoding',
]);

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
  assert.ok(c.image.endsWith(':v1.0.1'), 'the release whose flags EPP_V1_0_1_FLAGS lists');
  for (const a of c.args as string[]) assert.ok(EPP_V1_0_1_FLAGS.has(/^--([\w-]+)/.exec(a)?.[1] ?? a), `${a}: not a flag of the v1.0.1 picker`);
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
  assert.ok(config.schedulingProfiles[0].plugins.some((p: Parsed) => p.pluginRef === 'lora-affinity-scorer'), 'adapters are routed by affinity');

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
    ['kv-cache-usage-percentage-metric', 'lora-info-metric', 'total-queued-requests-metric'],
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
  // Pickers from v1.3 (running) and v1.1 (cache info) read these two too, by these default names.
  const running = 'vllm:num_requests_running';
  const cacheInfo = 'vllm:cache_config_info';
  while (!(value(busy, flags.get('total-queued-requests-metric')!) >= 1 && value(busy, running) === 2)) {
    assert.ok(Date.now() < deadline, 'the load never showed as 2 running and some waiting');
    await new Promise((r) => setTimeout(r, 10));
    busy = await scrape();
  }
  for (const name of [flags.get('total-queued-requests-metric')!, flags.get('kv-cache-usage-percentage-metric')!, running, cacheInfo]) {
    assert.equal(busy.get(name)?.type, 'gauge', `${name} is a gauge on /metrics`);
  }
  // Semantics: the same figures as the server's own gauges; usage a fraction, not a percentage.
  assert.equal(value(busy, flags.get('total-queued-requests-metric')!), value(busy, 'gpt2_num_requests_waiting'));
  assert.equal(value(busy, running), value(busy, 'gpt2_num_sequences_running'));
  const usage = value(busy, flags.get('kv-cache-usage-percentage-metric')!);
  assert.ok(usage > 0 && usage < 1, `KV usage ${usage} is a fraction in (0, 1) while two sequences run`);
  assert.equal(usage, value(busy, 'gpt2_kv_cache_usage_ratio'));
  // The info gauge: value 1, block size and block count as labels (8192 tokens / 16 per block).
  assert.deepEqual(busy.get(cacheInfo)!.samples, [['{block_size="16",num_gpu_blocks="512"}', 1]]);
  // vLLM's LoRA info gauge (design.md), read for adapter affinity; a server without adapters need not have it.
  assert.equal(flags.get('lora-info-metric'), 'vllm:lora_requests_info');

  assert.deepEqual(await settled, [200, 200, 200, 200, 200]);
  await waitFor(() => app.serving.engine!.stats().running === 0, 30_000, 'idle');
  const idle = await scrape();
  for (const name of [flags.get('total-queued-requests-metric')!, running, flags.get('kv-cache-usage-percentage-metric')!]) {
    assert.equal(value(idle, name), 0, `${name} idle`);
  }
});

test('deploy/gateway/lora: the adapters\' volume, an InferenceObjective per adapter, and a patch giving deploy/deployment.yaml\'s server the adapters', () => {
  const dir = 'deploy/gateway/lora';
  const kustomization = readYaml(`${dir}/Kustomization`)[0];
  const objects = (kustomization.resources as string[]).flatMap((f) => readYaml(`${dir}/${f}`));
  // kubectl apply -f reads .yaml/.yml/.json: the patch, a partial Deployment, must not be one.
  for (const f of readdirSync(path.join(ROOT, dir)).filter((n) => /\.(ya?ml|json)$/.test(n))) {
    assert.ok((kustomization.resources as string[]).includes(f), `${dir}/${f} is applied by -f but is not a resource of -k`);
  }
  const pvc = only(objects, 'PersistentVolumeClaim');
  const pool = only(gateway(), 'InferencePool');

  const [patch] = readYaml(`${dir}/deployment.patch`);
  const deployment = readYaml('deploy/deployment.yaml')[0];
  assert.equal(patch.kind, 'Deployment');
  assert.equal(patch.metadata.name, deployment.metadata.name);
  const container = patch.spec.template.spec.containers[0];
  assert.equal(container.name, deployment.spec.template.spec.containers[0].name, 'merged into the server container (by name)');
  const args: string[] = container.args;
  assert.ok(args.every((a) => typeof a === 'string'), 'args are strings (a bare number is refused by the API)');
  assert.ok(args.includes('--enable-lora'));
  const value = (flag: string) => args.filter((a) => a.startsWith(`--${flag}=`)).map((a) => a.slice(flag.length + 3));
  const maxLoras = Number(value('max-loras')[0]);
  assert.ok(Number.isInteger(maxLoras) && maxLoras >= 1);
  assert.ok(Number.isInteger(Number(value('max-lora-rank')[0])));
  const mount = container.volumeMounts.find((m: Parsed) => m.name === 'adapters');
  assert.equal(mount.readOnly, true);
  const volume = patch.spec.template.spec.volumes.find((v: Parsed) => v.name === mount.name);
  assert.equal(volume.persistentVolumeClaim.claimName, pvc.metadata.name);
  const adapters = value('lora-modules').map((m) => {
    const [name, folder] = m.split('=');
    assert.match(name!, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    assert.ok(folder!.startsWith(`${mount.mountPath}/`), `${m}: a folder of the adapters' volume`);
    return name!;
  });
  assert.ok(adapters.length >= 2 && new Set(adapters).size === adapters.length, 'distinct adapter names');

  const objectives = objects.filter((o) => o.kind === 'InferenceObjective');
  assert.deepEqual(objectives.map((o) => o.metadata.name).sort(), [...adapters].sort(), 'one objective per adapter');
  for (const o of objectives) {
    assert.equal(o.apiVersion, 'inference.networking.x-k8s.io/v1alpha2');
    assert.deepEqual(o.spec.poolRef, { group: 'inference.networking.k8s.io', name: pool.metadata.name });
    assert.ok(Number.isInteger(o.spec.priority));
  }
  assert.ok(objectives.some((o) => o.spec.priority < 0), 'one sheddable objective, to show it');
  assert.equal(pickerMetrics(gateway()).get('lora-info-metric'), 'vllm:lora_requests_info');
});
