// mnistdiff in the browser: the page of `mnistdiff export web`.
//
// model.json (written by mnistdiff/export.py) says everything the sampler needs: the student's
// timesteps with their α_t and σ_t (samplers.step_grid), what the network predicts (ε or v),
// clip_x0, the guidance and the class names. model.onnx.gz is the U-Net, run by onnxruntime-web
// (WASM, SIMD; threads when the page is cross-origin isolated). Nothing here is fixed to a step
// count: a 1-, 2- or 4-step student is the same page.

import * as ort from './ort/ort.wasm.min.mjs';

const $ = (id) => document.getElementById(id);
const SIZE = 28; // MNIST images are 28 x 28
const GAP = 2;   // pixels between the digits of the grid canvas
const SEED_MAX = 4294967295;
const page = { cfg: null, session: null, threads: 1, pending: null, running: false, error: false,
               token: 0, first: null, trajectory: null, timings: [], marks: {},
               cache: new Map() };
// For the tests, scripts/bench_web.py and the curious: the timings of each grid, and the sampler.
window.mnistdiffPage = page;
Object.assign(page, { sample: (...args) => sample(...args), ort });

// ----------------------------------------------------------------------------- loading

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

// The .gz files are inflated here, so any static server will do. A server that already sent
// them with Content-Encoding: gzip hands over the inflated bytes: no gzip header, used as is.
async function gunzip(bytes) {
  if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function load() {
  if (location.protocol === 'file:') {
    throw new Error('open this page through a web server (python -m http.server in its ' +
                    'folder), not as a file: browsers do not load WebAssembly from file://');
  }
  if (!('DecompressionStream' in self)) {
    throw new Error('this browser has no DecompressionStream; use a current Chrome, Edge, ' +
                    'Firefox or Safari');
  }
  const [cfg, model, wasm] = await Promise.all([
    fetch('model.json').then((r) => {
      if (!r.ok) throw new Error(`model.json: HTTP ${r.status}`);
      return r.json();
    }),
    fetchBytes('model.onnx.gz').then(gunzip),
    fetchBytes('ort/ort-wasm-simd-threaded.wasm.gz').then(gunzip),
  ]);
  page.marks.fetched = performance.now(); // ms since the page was opened
  if (cfg.format !== 'mnistdiff-onnx/1') throw new Error(`model.json: unknown format ${cfg.format}`);
  if (cfg.sample.sampler !== 'ddim' || cfg.sample.eta !== 0) {
    throw new Error(`model.json: this page samples with DDIM at eta 0, the model with ` +
                    `${cfg.sample.sampler}`);
  }
  ort.env.wasm.wasmBinary = wasm;
  ort.env.wasm.wasmPaths = { mjs: new URL('./ort/ort-wasm-simd-threaded.mjs', import.meta.url).href };
  // Threads need SharedArrayBuffer, so cross-origin isolation (the COOP and COEP headers of
  // _headers). Then onnxruntime-web's own default, half the logical cores up to 4, unless the
  // address asks for a count (?threads=2: what scripts/bench_web.py compares).
  const asked = Number(new URLSearchParams(location.search).get('threads'));
  const cores = navigator.hardwareConcurrency || 1;
  page.threads = !self.crossOriginIsolated ? 1
    : Number.isInteger(asked) && asked >= 1 ? Math.min(asked, 16) : Math.min(4, Math.ceil(cores / 2));
  ort.env.wasm.numThreads = page.threads;
  page.session = await ort.InferenceSession.create(model, {
    executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  page.marks.session = performance.now();
  page.cfg = cfg;
}

// ----------------------------------------------------------------------------- noise

// Seeded Gaussian noise, one stream per image (as the pipeline gives each image its own
// generator, so the first digits stay put when the count grows): xoshiro128** (Blackman and
// Vigna 2018) with its state from splitmix32 of the seed (two words) and of the image's index
// (two words), so distinct (seed, index) pairs start distinct streams; normals by Box-Muller.
// This is not torch's generator: the page's digits of a seed are not mnistdiff sample's.
function splitmix32(a) {
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let z = a;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  };
}

function gaussians(seed, index, out) {
  const a = splitmix32(seed | 0), b = splitmix32(index ^ 0x5bd1e995);
  let s0 = a(), s1 = a(), s2 = b(), s3 = b();
  const next = () => { // xoshiro128**
    const r = Math.imul(((Math.imul(s1, 5) << 7) | (Math.imul(s1, 5) >>> 25)), 9);
    const t = s1 << 9;
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = (s3 << 11) | (s3 >>> 21);
    return r >>> 0;
  };
  for (let i = 0; i < out.length; i += 2) {
    const u1 = (next() + 1) / 4294967296, u2 = next() / 4294967296; // u1 in (0, 1]
    const r = Math.sqrt(-2 * Math.log(u1)), phi = 2 * Math.PI * u2;
    out[i] = r * Math.cos(phi);
    if (i + 1 < out.length) out[i + 1] = r * Math.sin(phi);
  }
}

// ----------------------------------------------------------------------------- sampling

// One network evaluation at timestep t for the whole batch, with classifier-free guidance as
// diffusion.GuidedEps: w = 0 unconditional, w = 1 conditional (one pass each); otherwise, where
// t / (T - 1) is in the guidance interval, one pass over the doubled batch (conditional half
// first) and out = out_u + w (out_c - out_u).
async function network(x, t, labels) {
  const { cfg, session } = page;
  const n = labels.length, w = cfg.sample.guidance, [lo, hi] = cfg.sample.guidance_interval;
  const u = t / (cfg.T - 1);
  const guided = w !== 0 && w !== 1 && lo <= u && u <= hi;
  const y = guided ? [...labels, ...labels.map(() => cfg.null_label)]
    : w === 0 ? labels.map(() => cfg.null_label) : labels;
  let input = x;
  if (guided) { input = new Float32Array(2 * x.length); input.set(x); input.set(x, x.length); }
  const b = y.length, shape = [b, cfg.image.channels, SIZE, SIZE];
  const feeds = {
    x: new ort.Tensor('float32', input, shape),
    t: new ort.Tensor('int64', new BigInt64Array(b).fill(BigInt(t)), [b]),
    y: new ort.Tensor('int64', BigInt64Array.from(y, (v) => BigInt(v)), [b]),
  };
  const out = (await session.run(feeds))[cfg.model.output].data;
  if (!guided) return out;
  const mixed = new Float32Array(x.length);
  for (let j = 0; j < x.length; j++) {
    const c = out[j], uu = out[x.length + j];
    mixed[j] = uu + w * (c - uu);
  }
  return mixed;
}

// The student's own few-step rule: DDIM (Song et al. 2021, eq. 12) with η = 0, and clip_x0,
// exactly as samplers.ddim with samplers.denoise:
//   ε  = the network's ε, or for v-prediction ε = α_t v + σ_t x_t   (diffusion.VPrediction.eps)
//   x0 = (x_t - σ_t ε) / α_t                                        (DDPM eq. 4 solved for x0)
//   clip_x0: x0 = clamp(x0, -1, 1), then ε = (x_t - α_t x0) / σ_t    (back on x_t = α_t x0 + σ_t ε)
//   x_s = α_s x0 + σ_s ε                                            (eq. 12 with σ = 0)
// The grid's last (α, σ) is (1, 0), the clean image, so x ends as the final predicted x0.
// ``onStep(i, x0)`` sees every step's predicted x0 (the page shows it while the rest runs);
// ``noise``, when given, is the starting x_T itself (the tests compare with samplers.ddim);
// otherwise image k draws the noise of image ``indices[k]`` (default k) of the seed.
// Returns null when a newer request superseded this one (checked after every step).
async function sample(labels, seed, token, onStep = null, noise = null, indices = null) {
  const { cfg } = page;
  const per = cfg.image.channels * SIZE * SIZE, n = labels.length;
  const x = noise ? Float32Array.from(noise) : new Float32Array(n * per);
  const x0s = new Float32Array(n * per);
  if (!noise) {
    for (let i = 0; i < n; i++) gaussians(seed, indices ? indices[i] : i, x.subarray(i * per, (i + 1) * per));
  }
  const { timesteps, alphas, sigmas } = cfg.grid;
  const v = cfg.objective === 'v', clip = cfg.sample.clip_x0;
  const trajectory = { x: [x.slice(0, per)], x0: [] };
  for (let i = 0; i < timesteps.length; i++) {
    const at = alphas[i], st = sigmas[i], as = alphas[i + 1], ss = sigmas[i + 1];
    const out = await network(x, timesteps[i], labels);
    if (token !== page.token) return null;
    for (let j = 0; j < x.length; j++) {
      const xt = x[j];
      let eps = v ? at * out[j] + st * xt : out[j];
      let x0 = (xt - st * eps) / at;
      if (clip) {
        x0 = x0 < -1 ? -1 : x0 > 1 ? 1 : x0;
        eps = (xt - at * x0) / st;
      }
      x[j] = as * x0 + ss * eps;
      x0s[j] = x0;
    }
    trajectory.x.push(x.slice(0, per));
    trajectory.x0.push(x0s.slice(0, per));
    if (onStep && i + 1 < timesteps.length) onStep(i, x0s);
  }
  return { x, trajectory };
}

// ----------------------------------------------------------------------------- drawing

function toPixels(values, data, offset = 0, stride = SIZE) {
  // data.to_uint8: [-1, 1] -> 0..255, clamped and rounded; grey in RGBA
  for (let r = 0; r < SIZE; r++) {
    for (let c = 0; c < SIZE; c++) {
      const v = values[r * SIZE + c];
      const g = Math.round(((v < -1 ? -1 : v > 1 ? 1 : v) + 1) * 127.5);
      const k = 4 * (offset + r * stride + c);
      data[k] = data[k + 1] = data[k + 2] = g;
      data[k + 3] = 255;
    }
  }
}

function drawGrid(x, labels, seed, shows) {
  const n = labels.length, cols = Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
  const per = page.cfg.image.channels * SIZE * SIZE;
  const canvas = $('grid'), step = SIZE + GAP;
  const width = cols * step - GAP, height = rows * step - GAP;
  canvas.width = width;
  canvas.height = height;
  const scale = Math.max(1, Math.min(6, Math.floor(Math.min(600, 96 * cols) / width)));
  canvas.style.width = `${width * scale}px`;
  canvas.style.height = `${height * scale}px`;
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(width, height);
  for (let k = 3; k < image.data.length; k += 4) image.data[k] = 255; // black gaps
  for (let i = 0; i < n; i++) {
    const r = Math.floor(i / cols), c = i % cols;
    toPixels(x.subarray(i * per, i * per + SIZE * SIZE), image.data, r * step * width + c * step, width);
  }
  ctx.putImageData(image, 0, 0);
  Object.assign(canvas.dataset, { count: n, cols, cell: SIZE, gap: GAP, seed, shows,
                                  labels: labels.join(',') });
}

function drawSmall(canvas, values) {
  const ctx = canvas.getContext('2d');
  if (!values) { ctx.clearRect(0, 0, SIZE, SIZE); return; }
  const image = ctx.createImageData(SIZE, SIZE);
  toPixels(values, image.data);
  ctx.putImageData(image, 0, 0);
}

function showStep() {
  const traj = page.trajectory;
  if (!traj) return;
  const k = Number($('scrub').value), steps = traj.x0.length, ts = page.cfg.grid.timesteps;
  drawSmall($('xt'), traj.x[k]);
  drawSmall($('x0'), k > 0 ? traj.x0[k - 1] : null);
  $('scrub-label').textContent = k === 0
    ? `start: pure noise at t = ${ts[0]}`
    : k === steps ? `after step ${k} of ${steps}: the digit (last prediction at t = ${ts[k - 1]})`
      : `after step ${k} of ${steps}: x at t = ${ts[k]}, x0 predicted at t = ${ts[k - 1]}`;
}

// ----------------------------------------------------------------------------- controls

function message(text) {
  $('message').textContent = text || '';
}

// The request the controls describe, or a message saying what is wrong with them.
function readControls() {
  const max = page.cfg.page.max_count;
  const countText = $('count').value.trim(), seedText = $('seed').value.trim();
  const digit = Number(document.querySelector('#digits input:checked')?.value ?? 0);
  if (!/^\d+$/.test(countText) || Number(countText) < 1 || Number(countText) > max) {
    return { error: `How many: "${countText.slice(0, 20)}" is not a whole number from 1 to ${max}.` };
  }
  if (!/^\d+$/.test(seedText) || Number(seedText) > SEED_MAX) {
    return { error: `Seed: "${seedText.slice(0, 20)}" is not a whole number from 0 to ${SEED_MAX}.` };
  }
  return { digit, count: Number(countText), seed: Number(seedText) };
}

// Latest wins: a control change while a grid is being made replaces the waiting request and
// stops the one in progress after its current step, so the page follows the controls at once.
function request() {
  const req = readControls();
  req.asked = performance.now();
  page.error = Boolean(req.error);
  if (req.error) {
    page.token++; // a running grid for old controls is not worth finishing
    page.pending = null;
    message(req.error);
    document.body.dataset.state = 'error';
    return;
  }
  message('');
  document.body.dataset.state = 'busy';
  page.pending = req;
  page.token++;
  if (!page.running) pump();
}

// Finished images are kept by (digit, seed, index): image i's noise is its own stream, so a
// grid that grows by one image computes that one, and one that shrinks or comes back computes
// none. The least recently shown (digit, seed) goes first past CACHE_IMAGES (~12 MB).
const CACHE_IMAGES = 4000;

function cacheEntry(digit, seed) {
  const key = `${digit}:${seed}`;
  const entry = page.cache.get(key) ?? { images: [], trajectory: null };
  page.cache.delete(key);
  page.cache.set(key, entry); // a Map keeps insertion order: the most recent is last
  let total = 0;
  for (const e of page.cache.values()) total += e.images.length;
  for (const [k, e] of page.cache) {
    if (total <= CACHE_IMAGES || e === entry) break;
    total -= e.images.length;
    page.cache.delete(k);
  }
  return entry;
}

async function pump() {
  page.running = true;
  try {
    while (page.pending) {
      const req = page.pending, token = page.token;
      page.pending = null;
      const per = page.cfg.image.channels * SIZE * SIZE;
      const labels = new Array(req.count).fill(req.digit);
      const entry = cacheEntry(req.digit, req.seed);
      const missing = [];
      for (let i = 0; i < req.count; i++) if (!entry.images[i]) missing.push(i);
      const assemble = (fresh) => { // the grid: kept images, and the new ones (or their x0)
        const x = new Float32Array(req.count * per);
        for (let i = 0; i < req.count; i++) if (entry.images[i]) x.set(entry.images[i], i * per);
        if (fresh) missing.forEach((i, k) => x.set(fresh.subarray(k * per, (k + 1) * per), i * per));
        return x;
      };
      const start = performance.now();
      let preview = null;
      if (missing.length) {
        const result = await sample(missing.map(() => req.digit), req.seed, token, (i, x0) => {
          drawGrid(assemble(x0), labels, req.seed, `step ${i + 1}`); // the prediction so far
          preview = preview ?? performance.now() - req.asked;
          $('status').textContent = `step ${i + 1} of ${page.cfg.sample.steps}\u2026`;
        }, null, missing);
        if (!result) continue; // superseded: the newer request is pending
        missing.forEach((i, k) => { entry.images[i] = result.x.slice(k * per, (k + 1) * per); });
        if (missing[0] === 0) entry.trajectory = result.trajectory; // the first image's steps
      }
      drawGrid(assemble(null), labels, req.seed, 'done');
      const done = performance.now();
      page.trajectory = entry.trajectory;
      showStep();
      const timing = { count: req.count, digit: req.digit, seed: req.seed, previewMs: preview,
                       computed: missing.length, ms: done - req.asked, sampleMs: done - start,
                       at: done };
      page.timings.push(timing);
      if (page.first === null) {
        page.first = done; // ms since the page was opened (performance.now's origin)
        document.body.dataset.firstGridMs = done.toFixed(0);
      }
      const name = page.cfg.classes[req.digit], steps = page.cfg.sample.steps;
      const made = missing.length === req.count ? '' : missing.length === 0 ? ', all kept'
        : `, ${missing.length} new`;
      $('status').textContent = `${req.count} × ${name} in ${timing.ms.toFixed(0)} ms ` +
        `(${steps} step${steps > 1 ? 's' : ''}, seed ${req.seed}${made})` +
        (page.timings.length === 1 ? `; first grid ${done.toFixed(0)} ms after opening` : '');
      document.body.dataset.latencyMs = timing.ms.toFixed(1);
    }
    document.body.dataset.state = page.error ? 'error' : 'done';
  } catch (e) {
    message(`Sampling failed: ${e.message || e}`);
    document.body.dataset.state = 'error';
  } finally {
    page.running = false;
    document.body.dataset.ready = '1';
  }
}

function setUp() {
  const { cfg } = page;
  const max = cfg.page.max_count, steps = cfg.sample.steps;
  $('name').textContent = cfg.name;
  document.title = `${cfg.name} in the browser`;
  const per = steps === 1 ? 'one network pass' : `${steps} steps`;
  $('about').textContent = `${cfg.name} (${cfg.dataset}) makes each image in ${per}` +
    (cfg.sample.guidance !== 1 && cfg.sample.guidance !== 0 ? ` with guidance ${cfg.sample.guidance}` : '') +
    `, here on this machine: onnxruntime-web ${ort.env.versions?.web ?? ''} on WebAssembly ` +
    `(SIMD, ${page.threads} thread${page.threads > 1 ? 's' : ''}).`;
  $('details').textContent = `Sampler: DDIM (eta 0, clip_x0 ${cfg.sample.clip_x0}) on ` +
    `${cfg.sample.spacing} timesteps ${cfg.grid.timesteps.join(', ')} of ${cfg.T}; the network ` +
    `predicts ${cfg.objective === 'v' ? 'v' : 'ε'}. Exported by mnistdiff ${cfg.mnistdiff} ` +
    `(max difference from PyTorch ${cfg.verified.max_abs_diff.toExponential(1)}).`;
  $('max-count').textContent = max;
  for (const id of ['count', 'count-range']) $(id).max = max;
  const box = $('digits');
  cfg.classes.forEach((name, i) => {
    const label = document.createElement('label');
    label.innerHTML = `<input type="radio" name="digit" value="${i}"${i === 0 ? ' checked' : ''}><span></span>`;
    label.querySelector('span').textContent = name;
    label.title = name;
    box.append(label);
  });
  box.addEventListener('change', request);
  $('count').addEventListener('input', () => {
    const v = Number($('count').value);
    if (Number.isInteger(v) && v >= 1 && v <= max) $('count-range').value = v;
    request();
  });
  $('count-range').addEventListener('input', () => { $('count').value = $('count-range').value; request(); });
  $('seed').addEventListener('input', request);
  $('reseed').addEventListener('click', () => {
    $('seed').value = Math.floor(Math.random() * 1e6);
    request();
  });
  if (steps > 1) {
    $('denoise').hidden = false;
    $('scrub').max = steps;
    $('scrub').value = steps;
    $('scrub').addEventListener('input', showStep);
  }
}

load().then(() => {
  setUp();
  request();
}).catch((e) => {
  message(`Could not start: ${e.message || e}`);
  $('about').textContent = '';
  document.body.dataset.state = 'error';
  document.body.dataset.ready = '1';
});
