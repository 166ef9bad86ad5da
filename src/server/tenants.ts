// API keys as tenants: --api-key (key0, key1, ... by position) and --api-keys-file (one
// "KEY NAME" per line). A tenant is known everywhere by its name (logs, metrics, the fairness of
// admission, its prefix-cache salt), so that re-reading the file on SIGHUP keeps each key's
// identity, and no key ever reaches a log line or a label: only its SHA-256 digest is kept.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError, type ServerConfig } from '../config.js';

export interface TenantKey {
  /** SHA-256 of the key (what auth.ts compares, in constant time). */
  digest: Buffer;
  name: string;
}

/** Names become Prometheus label values and log fields: kept short and plain. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function keyDigest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/**
 * The keys of --api-key (named key0, key1, ...) and of the file's text, checked: a malformed line
 * or a key or name given twice throws ConfigError naming the file's line, never the key.
 */
export function tenantKeys(flagKeys: readonly string[], file?: { path: string; text: string }): TenantKey[] {
  const keys: TenantKey[] = [];
  const where = new Map<string, string>(); // digest (hex) or name -> where it was given
  const add = (key: string, name: string, at: string) => {
    const hex = keyDigest(key).toString('hex');
    const keyTaken = where.get(`key:${hex}`);
    if (keyTaken) throw new ConfigError(`${at}: this key was already given (${keyTaken})`);
    const nameTaken = where.get(`name:${name}`);
    if (nameTaken) throw new ConfigError(`${at}: the name "${name}" was already given (${nameTaken})`);
    where.set(`key:${hex}`, at).set(`name:${name}`, at);
    keys.push({ digest: keyDigest(key), name });
  };
  flagKeys.forEach((key, i) => add(key, `key${i}`, `--api-key #${i + 1}`));
  if (!file) return keys;
  file.text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = `${file.path}:${i + 1}`;
    const fields = line.split(/\s+/);
    if (fields.length !== 2) throw new ConfigError(`${at}: expected "KEY NAME" (two fields separated by spaces), found ${fields.length} field${fields.length === 1 ? '' : 's'}`);
    const [key, name] = fields as [string, string];
    if (!NAME.test(name)) throw new ConfigError(`${at}: the name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    add(key, name, at);
  });
  return keys;
}

/**
 * The current keys. With --api-keys-file, auth is on even while the file holds no key (then every
 * protected request is refused): emptying the file must never open the server.
 */
export class Tenants {
  private current: readonly TenantKey[];

  constructor(
    private readonly flagKeys: readonly string[],
    private readonly file: string | undefined,
  ) {
    this.current = this.read();
  }

  static fromConfig(config: Pick<ServerConfig, 'apiKeys' | 'apiKeysFile'>): Tenants {
    return new Tenants(config.apiKeys, config.apiKeysFile);
  }

  get authRequired(): boolean {
    return this.flagKeys.length > 0 || this.file !== undefined;
  }

  get keys(): readonly TenantKey[] {
    return this.current;
  }

  get names(): string[] {
    return this.current.map((k) => k.name);
  }

  /**
   * Re-reads --api-keys-file (SIGHUP). A file that cannot be read or is malformed changes nothing
   * and throws ConfigError: the old keys keep working.
   */
  reload(): void {
    this.current = this.read();
  }

  private read(): TenantKey[] {
    if (this.file === undefined) return tenantKeys(this.flagKeys);
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`--api-keys-file ${this.file}: ${(err as Error).message}`);
    }
    return tenantKeys(this.flagKeys, { path: this.file, text });
  }
}
