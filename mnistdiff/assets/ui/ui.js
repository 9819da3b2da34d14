// mnistdiff ui: the page's behaviour. No libraries; talks only to the server that served it.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
let card = null; // the selected model's card (defaults, classes, samplers)

// ------------------------------------------------------------------------- talking to the server

function networkMessage(err) {
  return err instanceof TypeError
    ? "cannot reach the server: is mnistdiff ui still running?"
    : err.message;
}

async function getJSON(url) {
  const response = await fetch(url);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// POST, then read server-sent events (start, step..., done | error) from the response body.
// An AbortSignal stops it (and, as the connection closes, the sampling on the server).
async function stream(url, body, onEvent, signal) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(data.error || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const payload = JSON.parse(data);
      if (event === "error") throw new Error(payload.error);
      if (event === "done") return payload;
      onEvent(event, payload);
    }
  }
  throw new Error("the server stopped before finishing (its terminal says why)");
}

// ------------------------------------------------------------------------- page helpers

function showError(section, message) {
  const box = $(".error", section);
  box.textContent = message;
  box.hidden = !message;
}

function setState(section, state) {
  section.dataset.state = state; // idle | running | done | error (the tests wait on it)
  const live = section.id === "make" && $("#live").checked;
  for (const button of $$("button.go", section)) button.disabled = state === "running" && !live;
}

function values(form) {
  const body = { model: $("#model").value };
  for (const el of form.elements) if (el.name && el.type !== "checkbox") body[el.name] = el.value;
  return body;
}

function downloads(section, result) {
  const box = $(".downloads", section);
  box.replaceChildren(...result.files.map((f) => {
    const a = document.createElement("a");
    a.href = `/api/file/${result.id}/${f.name}`;
    a.download = f.name;
    a.textContent = `Download ${f.label}`;
    a.dataset.name = f.name;
    return a;
  }));
}

function showStep(section, step) {
  $(".live", section).hidden = false;
  $(".xt", section).src = step.xt;
  $(".x0", section).src = step.x0;
  const batch = step.batches > 1 ? ` (batch ${step.batch}/${step.batches})` : "";
  $(".status", section).textContent = `step ${step.i}/${step.steps}, t = ${step.t}${batch}`;
}

async function run(section, work) {
  showError(section, "");
  setState(section, "running");
  try {
    await work();
    setState(section, "done");
  } catch (err) {
    if (err.name === "AbortError") return; // a newer request replaced this one
    showError(section, networkMessage(err));
    $(".status", section).textContent = "";
    for (const box of $$(".live, .result", section)) box.hidden = true; // no stale pictures
    setState(section, "error");
  }
}

// ------------------------------------------------------------------------- models and the card

async function loadModels() {
  const data = await getJSON("/api/models");
  const select = $("#model");
  select.replaceChildren(...data.models.map((m) => new Option(m.label, m.id)));
  select.value = data.default;
  await loadCard();
}

async function loadCard() {
  const status = $("#model-status");
  status.textContent = "loading...";
  try {
    card = await getJSON(`/api/card?model=${encodeURIComponent($("#model").value)}`);
  } catch (err) {
    status.textContent = "";
    showGlobalError(networkMessage(err));
    return;
  }
  showGlobalError("");
  const d = card.defaults;
  status.textContent = `${card.classes.length} classes, T = ${card.timesteps}; defaults: ` +
    `${d.sampler}, ${d.steps} step${d.steps > 1 ? "s" : ""}, guidance ${d.guidance}`;
  const plural = card.noun === "digit" ? "Digits" : "Classes";
  for (const span of $$(".plural")) span.textContent = plural;
  for (const input of $$("input[name=n]")) input.max = card.limits.per_class;
  $("#complete-form [name=resample]").max = card.limits.resample;
  $("#morph-form [name=frames]").max = card.limits.frames;
  $("#live").checked = card.live;
  // the Complete tab's model may be another (a few-step student does not inpaint)
  const own = (el) => (el.closest("#complete-form") ? card.complete_defaults : d);
  for (const select of $$("select.sampler")) {
    const names = select.classList.contains("deterministic")
      ? card.samplers.filter((s) => s !== "ddpm") : card.samplers;
    select.replaceChildren(...names.map((s) => new Option(s, s)));
    const sampler = own(select).sampler;
    select.value = names.includes(sampler) ? sampler : names[0];
  }
  for (const input of $$("input.steps")) { input.value = own(input).steps; input.max = card.timesteps; input.min = 1; }
  for (const input of $$("input.guidance")) { input.value = own(input).guidance; input.min = 0; }
  for (const input of $$("input.seed")) { input.value = own(input).seed; input.min = 0; }
  for (const select of $$("select.digit-choice")) {
    const keep = select.value;
    select.replaceChildren(...card.classes.map((name, i) =>
      new Option(name === String(i) ? name : `${i} ${name}`, String(i))));
    if (keep && Number(keep) < card.classes.length) select.value = keep;
  }
  const [a, b] = [$("#morph-form [name=digit_a]"), $("#morph-form [name=digit_b]")];
  if (!a.dataset.touched) { a.value = "1"; b.value = "7"; }
  if (!$("#complete-form [name=digits]").dataset.touched) $("#complete-form [name=digits]").value = "7";
  renderCard();
}

function showGlobalError(message) {
  const box = $("#global-error");
  box.textContent = message;
  box.hidden = !message;
}

function renderCard() {
  const section = $("#card");
  $(".card-title", section).textContent = card.label;
  $(".facts tbody", section).replaceChildren(...card.rows.map(([key, value]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = key;
    td.textContent = value;
    tr.append(th, td);
    return tr;
  }));
  const pct = (x) => (typeof x === "number" ? `${(100 * x).toFixed(2)} %` : "-");
  const num = (x) => (typeof x === "number" ? x.toFixed(3) : "-");
  $(".metrics tbody", section).replaceChildren(...card.metrics.map((m) => {
    const tr = document.createElement("tr");
    for (const v of [m.label, m.n, m.sampler, m.steps, m.guidance, pct(m.accuracy), num(m.fid), num(m.real_fid)]) {
      const td = document.createElement("td");
      td.textContent = v ?? "-";
      tr.append(td);
    }
    return tr;
  }));
  $(".metrics", section).hidden = card.metrics.length === 0;
  $(".no-metrics", section).hidden = card.metrics.length > 0;
}

// ------------------------------------------------------------------------- Make

let makeAbort = null; // the Make request in flight, replaced by the next one
let changedAt = null; // when a control last changed in live mode (for data-change-ms)

function setupMake() {
  const section = $("#make");
  const form = $("#make-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = values(event.target);
    if (makeAbort) makeAbort.abort();
    const controller = new AbortController();
    makeAbort = controller;
    run(section, async () => {
      if (!$("#live").checked) $(".result", section).hidden = true;
      $(".status", section).textContent = "starting...";
      const started = performance.now();
      let first = null;
      const result = await stream("/api/make", body, (name, data) => {
        if (name === "step") {
          if (first === null) first = performance.now() - started;
          showStep(section, data);
        }
      }, controller.signal);
      section.dataset.madeMs = String(Math.round(performance.now() - started));
      if (changedAt !== null) { // from the change to this grid, the debounce included
        section.dataset.changeMs = String(Math.round(performance.now() - changedAt));
        changedAt = null;
      }
      const box = $(".result", section);
      $(".grid", box).src = result.grid;
      $(".summary", box).textContent = result.summary;
      $(".command", box).textContent = result.command;
      box.dataset.labels = result.labels.join(",");
      box.dataset.shape = result.shape.join(",");
      box.dataset.firstFrameMs = String(Math.round(first ?? -1));
      downloads(section, result);
      box.hidden = false;
      $(".status", section).textContent = `done; first frame after ${Math.round(first ?? 0)} ms`;
    });
  });
}

// Live: with a fast model, Make runs again as soon as a control changes (no click).
function setupLive() {
  const form = $("#make-form");
  let timer = null;
  const again = (event) => {
    if (!$("#live").checked || event.target.name === "live") return;
    changedAt = changedAt ?? performance.now();
    clearTimeout(timer);
    timer = setTimeout(() => form.requestSubmit(), 120);
  };
  form.addEventListener("input", again);
  form.addEventListener("change", again);
}

// ------------------------------------------------------------------------- Complete my drawing

const SIZE = 28;
const pixels = new Float32Array(SIZE * SIZE); // 0..255, white strokes on black
const mask = new Uint8Array(SIZE * SIZE); // 1 = drawn: keep this pixel

function paint(x, y) {
  const radius = Number($("#brush").value);
  const reach = Math.ceil(radius);
  for (let row = Math.floor(y) - reach; row <= Math.floor(y) + reach; row++) {
    for (let col = Math.floor(x) - reach; col <= Math.floor(x) + reach; col++) {
      if (row < 0 || col < 0 || row >= SIZE || col >= SIZE) continue;
      const d = Math.hypot(col + 0.5 - x, row + 0.5 - y);
      const v = 255 * Math.min(1, Math.max(0, (radius - d) / 0.8));
      if (v <= 0) continue;
      const i = row * SIZE + col;
      pixels[i] = Math.max(pixels[i], Math.round(v));
      mask[i] = 1;
    }
  }
}

function drawCanvas() {
  const canvas = $("#canvas");
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(SIZE, SIZE);
  for (let i = 0; i < SIZE * SIZE; i++) {
    const v = pixels[i];
    image.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
}

function setupCanvas() {
  const canvas = $("#canvas");
  let last = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) / box.width * SIZE, (event.clientY - box.top) / box.height * SIZE];
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    paint(...last);
    drawCanvas();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const [x, y] = at(event);
    const n = Math.max(1, Math.ceil(Math.hypot(x - last[0], y - last[1]) / 0.25));
    for (let k = 1; k <= n; k++) paint(last[0] + (x - last[0]) * k / n, last[1] + (y - last[1]) * k / n);
    last = [x, y];
    drawCanvas();
  });
  const stop = () => { last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("#clear").addEventListener("click", () => { pixels.fill(0); mask.fill(0); drawCanvas(); });
  drawCanvas();
}

function setupComplete() {
  const section = $("#complete");
  setupCanvas();
  $("#complete-form [name=digits]").addEventListener("change", (e) => { e.target.dataset.touched = "1"; });
  $("#complete-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { ...values(event.target), pixels: Array.from(pixels), mask: Array.from(mask) };
    run(section, async () => {
      $(".result", section).hidden = true;
      $(".status", section).textContent = "starting...";
      const result = await stream("/api/complete", body, (name, data) => {
        if (name === "step") showStep(section, data);
      });
      const box = $(".result", section);
      $(".completions", box).replaceChildren(...result.images.map((src, i) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = `completion ${i + 1}`;
        return img;
      }));
      $(".summary", box).textContent = result.summary;
      $(".command", box).textContent = result.command;
      box.dataset.labels = result.labels.join(",");
      downloads(section, result);
      box.hidden = false;
      $(".status", section).textContent = "done";
    });
  });
}

// ------------------------------------------------------------------------- Morph

function setupMorph() {
  const section = $("#morph");
  for (const select of $$("#morph-form select.digit-choice")) {
    select.addEventListener("change", () => { $("#morph-form [name=digit_a]").dataset.touched = "1"; });
  }
  $("#morph-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = values(event.target);
    run(section, async () => {
      $(".result", section).hidden = true;
      $(".status", section).textContent = "sampling the frames...";
      const result = await postJSON("/api/morph", body);
      const box = $(".result", section);
      $(".strip", box).src = result.strip;
      $(".gif", box).src = result.gif;
      $(".summary", box).textContent = result.summary;
      box.dataset.frames = String(result.frames);
      downloads(section, result);
      box.hidden = false;
      $(".status", section).textContent = "";
    });
  });
}

// ------------------------------------------------------------------------- tabs, start

function setupTabs() {
  for (const tab of $$("nav [role=tab]")) {
    tab.addEventListener("click", () => {
      for (const other of $$("nav [role=tab]")) other.setAttribute("aria-selected", String(other === tab));
      for (const panel of $$("main > section")) panel.hidden = panel.id !== tab.dataset.tab;
    });
  }
}

window.mnistdiff = {
  drawing: () => ({ pixels: Array.from(pixels), mask: Array.from(mask) }),
};

document.addEventListener("DOMContentLoaded", async () => {
  setupTabs();
  setupMake();
  setupLive();
  setupComplete();
  setupMorph();
  $("#model").addEventListener("change", loadCard);
  for (const section of $$("main > section")) setState(section, "idle");
  try {
    await loadModels();
    document.body.dataset.ready = "1";
  } catch (err) {
    showGlobalError(networkMessage(err));
  }
});
