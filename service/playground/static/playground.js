"use strict";
// Ten held-out test digits of sklearn digits (8x8, levels 0..16), one per class.
const EXAMPLES = [[[0,0,5,13,9,1,0,0],[0,0,13,15,10,15,5,0],[0,3,15,2,0,11,8,0],[0,4,12,0,0,8,8,0],[0,5,8,0,0,9,8,0],[0,4,11,0,1,12,7,0],[0,2,14,5,10,12,0,0],[0,0,6,13,10,0,0,0]],[[0,0,0,0,14,13,1,0],[0,0,0,5,16,16,2,0],[0,0,0,14,16,12,0,0],[0,1,10,16,16,12,0,0],[0,3,12,14,16,9,0,0],[0,0,0,5,16,15,0,0],[0,0,0,4,16,14,0,0],[0,0,0,1,13,16,1,0]],[[0,0,0,8,15,8,0,0],[0,0,3,16,12,16,4,0],[0,0,2,10,1,16,4,0],[0,0,0,0,8,14,0,0],[0,0,0,9,15,3,0,0],[0,3,16,14,4,0,0,0],[0,4,15,14,7,1,0,0],[0,0,0,9,12,14,4,0]],[[0,1,10,15,11,1,0,0],[0,3,8,8,11,12,0,0],[0,0,0,5,14,15,1,0],[0,0,0,11,15,2,0,0],[0,0,0,4,15,2,0,0],[0,0,0,0,12,10,0,0],[0,0,3,4,10,16,1,0],[0,0,13,16,15,10,0,0]],[[0,0,0,5,14,0,0,0],[0,0,1,15,13,0,0,0],[0,0,9,16,13,0,0,0],[0,5,16,15,13,0,0,0],[0,8,16,16,16,15,9,0],[0,0,4,10,14,8,5,0],[0,0,0,8,12,0,0,0],[0,0,0,7,10,0,0,0]],[[0,0,12,8,8,7,0,0],[0,3,16,16,11,7,0,0],[0,2,14,1,0,0,0,0],[0,5,14,5,0,0,0,0],[0,2,15,16,9,0,0,0],[0,0,0,2,16,2,0,0],[0,0,4,8,16,4,0,0],[0,0,11,14,9,0,0,0]],[[0,0,0,12,13,0,0,0],[0,0,5,16,8,0,0,0],[0,0,13,16,3,0,0,0],[0,0,14,13,0,0,0,0],[0,0,15,12,7,2,0,0],[0,0,13,16,13,16,3,0],[0,0,7,16,11,15,8,0],[0,0,1,9,15,11,3,0]],[[0,0,0,8,14,14,2,0],[0,0,0,6,10,15,11,0],[0,0,0,0,0,14,10,0],[0,2,8,11,12,16,8,0],[0,8,16,16,16,16,7,0],[0,0,0,0,11,15,1,0],[0,0,0,9,16,7,0,0],[0,0,0,12,13,1,0,0]],[[0,0,10,11,4,0,0,0],[0,0,10,15,13,13,1,0],[0,0,8,11,0,14,4,0],[0,0,0,13,15,13,0,0],[0,1,11,16,16,0,0,0],[0,1,15,3,9,10,0,0],[0,0,14,6,15,10,0,0],[0,0,8,14,7,1,0,0]],[[0,0,2,13,8,0,0,0],[0,0,6,16,16,6,0,0],[0,0,5,15,13,11,0,0],[0,0,0,7,16,15,0,0],[0,0,0,0,0,14,3,0],[0,0,0,0,0,7,11,0],[0,0,0,3,4,4,16,2],[0,0,2,15,13,14,13,2]]]
;

// The API lives at the server's root; the page at <root>/playground/.
const ROOT = new URL("../", window.location.href);
const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  detail: null,
  token: window.sessionStorage.getItem("genserve-token") || "",
  seed: null,
  image: null, // levels [C][H][W]
  mask: null, // 1 known, 0 missing [H][W]
  cursor: [0, 0],
  painting: false,
  last: null, // the stroke's previous cell
};

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  if (state.token) h.authorization = `Bearer ${state.token}`;
  return h;
}

function clearError() {
  const box = $("error");
  box.hidden = true;
  box.textContent = "";
}

// Errors as the API words them: problem+json title, detail and the fields at fault.
function showError(problem) {
  const box = $("error");
  box.textContent = "";
  const head = document.createElement("strong");
  head.textContent = `${problem.status || ""} ${problem.title || "Error"}: `;
  box.append(head, document.createTextNode(problem.detail || problem.error || ""));
  if (Array.isArray(problem.errors)) {
    const list = document.createElement("ul");
    for (const e of problem.errors) {
      const item = document.createElement("li");
      item.textContent = `${(e.loc || []).join(".")}: ${e.msg}`;
      list.append(item);
    }
    box.append(list);
  }
  box.hidden = false;
}

async function call(path, body) {
  clearError();
  const response = await fetch(new URL(path, ROOT), {
    method: body === undefined ? "GET" : "POST",
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let problem = { status: response.status, title: response.statusText };
    try {
      problem = await response.json();
    } catch (_) {
      /* not JSON: keep the status line */
    }
    if (response.status === 401) $("token-box").hidden = false;
    showError(problem);
    const error = new Error(problem.detail || response.statusText);
    error.shown = true;
    throw error;
  }
  return response;
}

function model() {
  return state.models[Number($("model").value)];
}

function parseLabels(text) {
  const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "");
  const items = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : p));
  if (items.length === 0) return undefined;
  return items.length === 1 ? items[0] : items;
}

function numberOrUndefined(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// --- model --------------------------------------------------------------------------
async function loadModels() {
  const list = await (await call("models")).json();
  state.models = list;
  const select = $("model");
  select.textContent = "";
  list.forEach((m, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `${m.name} v${m.version} (${m.family}, ${m.device})`;
    select.append(option);
  });
  if (list.length) await chooseModel();
}

function fact(list, name, value) {
  if (value === undefined || value === null) return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = typeof value === "number" ? String(Math.round(value * 1000) / 1000) : String(value);
  list.append(dt, dd);
}

async function chooseModel() {
  const m = model();
  const detail = await (await call(`models/${encodeURIComponent(m.name)}?version=${m.version}`)).json();
  // A quicker second choice may have answered first: a late answer for a model no longer
  // chosen must not replace the chosen one's facts, canvas and levels.
  if (model() !== m) return;
  state.detail = detail;
  const facts = $("facts");
  facts.textContent = "";
  fact(facts, "family", detail.family);
  fact(facts, "version", detail.version);
  fact(facts, "backend / device", `${detail.backend} / ${detail.device}`);
  fact(facts, "description", detail.description);
  const ev = detail.evaluation || {};
  fact(facts, "test bits/dim", ev.test_bpd);
  fact(facts, "Bayes-rule accuracy (test)", ev.posterior_accuracy);
  fact(facts, "sample label accuracy", ev.label_accuracy);
  fact(facts, "FID (judge's features)", ev.fid);
  fact(facts, "test log-likelihood (nats)", ev.test_log_likelihood);
  if (detail.warnings && detail.warnings.length) fact(facts, "warnings", detail.warnings.join("; "));
  const images = detail.data.kind === "images";
  const caps = detail.capabilities || [];
  $("image-section").hidden = !images;
  $("score").disabled = !caps.includes("log-likelihood");
  $("complete").disabled = !caps.includes("reconstruct");
  if (detail.limits && detail.limits.max_samples) $("n").max = String(detail.limits.max_samples);
  const context = detail.data.context;
  $("context-box").hidden = !(context && context.length);
  if (context && context.length) {
    const names = context.map((c) => (typeof c === "string" ? c : c.name)).join(", ");
    $("context").placeholder = names;
    $("context").setAttribute("aria-description", `one value each for ${names}`);
  }
  $("labels").disabled = !detail.conditional;
  if (images) setupCanvas();
  facts.dataset.model = detail.name;
}

// --- sample ---------------------------------------------------------------------------
async function sample(seed) {
  const m = model();
  const body = { model: m.name, version: m.version, n: numberOrUndefined("n") || 1, format: "png" };
  const labels = parseLabels($("labels").value);
  if (labels !== undefined && state.detail.conditional) body.labels = labels;
  if (seed !== undefined) body.seed = seed;
  const temperature = numberOrUndefined("temperature");
  if (temperature !== undefined) body.temperature = temperature;
  if (!$("context-box").hidden && $("context").value.trim() !== "") {
    body.context = $("context").value.split(",").map((v) => Number(v.trim()));
  }
  const response = await call("sample", body);
  state.seed = Number(response.headers.get("x-genserve-seed"));
  const blob = await response.blob();
  const grid = $("grid");
  // Decode the new grid before it replaces the old one: a swapped-in image that is still
  // loading has no height, and the page below it would jump up and back under a pointer.
  const url = URL.createObjectURL(blob);
  const next = new Image();
  next.src = url;
  await next.decode();
  const old = grid.src;
  grid.src = url;
  if (old) URL.revokeObjectURL(old);
  grid.alt = `${body.n} samples of ${m.name}` + (labels !== undefined ? ` with labels ${labels}` : "");
  grid.hidden = false;
  grid.dataset.seed = String(state.seed);
  let info = `seed ${state.seed}`;
  const p = response.headers.get("x-genserve-context-p-value");
  if (p !== null) info += `; observation's p-value under the simulator ${Number(p).toPrecision(3)}`;
  $("sample-info").textContent = info;
  $("again").disabled = false;
}

// --- the drawing ----------------------------------------------------------------------
function shape() {
  return state.detail.data.shape; // [C, H, W]
}

function levels() {
  return state.detail.data.levels;
}

function setupCanvas() {
  const [C, H, W] = shape();
  const blank = () => Array.from({ length: H }, () => new Array(W).fill(0));
  if (!state.image || state.image.length !== C || state.image[0].length !== H || state.image[0][0].length !== W) {
    state.image = Array.from({ length: C }, blank);
    state.mask = Array.from({ length: H }, () => new Array(W).fill(1));
  }
  const level = $("level");
  level.max = String(levels() - 1);
  if (Number(level.value) > levels() - 1) level.value = level.max;
  $("level-out").textContent = level.value;
  const example = $("example");
  example.textContent = "";
  const first = document.createElement("option");
  first.value = "";
  first.textContent = "pick one…";
  example.append(first);
  const digits = C === 1 && H === 8 && W === 8 && levels() === 17;
  if (digits) {
    EXAMPLES.forEach((_, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = `test digit ${i}`;
      example.append(o);
    });
  }
  const s = document.createElement("option");
  s.value = "sample";
  s.textContent = "a sample from this model";
  example.append(s);
  draw();
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const [, H, W] = shape();
  const cell = canvas.width / W;
  const top = levels() - 1;
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      const grey = 255 - Math.round((255 * state.image[0][i][j]) / top);
      ctx.fillStyle = `rgb(${grey},${grey},${grey})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
      if (!state.mask[i][j]) {
        ctx.fillStyle = "rgba(200,0,0,0.45)";
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
  }
  const [ci, cj] = state.cursor;
  if (document.activeElement === canvas) {
    ctx.strokeStyle = "#0a58ca";
    ctx.lineWidth = 3;
    ctx.strokeRect(cj * cell + 1.5, ci * cell + 1.5, cell - 3, cell - 3);
  }
  canvas.setAttribute("aria-label", `Drawing canvas, ${H} by ${W}; cursor at row ${ci + 1}, column ${cj + 1}`);
}

function paint(i, j, erase) {
  const [C] = shape();
  if (erase) {
    state.mask[i][j] = 0;
  } else {
    for (let c = 0; c < C; c++) state.image[c][i][j] = Number($("level").value);
    state.mask[i][j] = 1;
  }
}

function cellAt(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const [, H, W] = shape();
  const j = Math.floor(((event.clientX - rect.left) / rect.width) * W);
  const i = Math.floor(((event.clientY - rect.top) / rect.height) * H);
  return i >= 0 && i < H && j >= 0 && j < W ? [i, j] : null;
}

function erasing() {
  return document.querySelector('input[name="mode"]:checked').value === "erase";
}

function onPointer(event) {
  if (event.type === "pointerdown") {
    state.painting = true;
    state.last = null;
    // preventDefault below suppresses the mouse events whose default action focuses the
    // canvas; focus it here, so the arrow keys and Space draw after a click too.
    $("canvas").focus();
    $("canvas").setPointerCapture(event.pointerId);
  }
  if (!state.painting) return;
  const at = cellAt(event);
  if (at) {
    // Every cell on the way from the last one: a fast stroke skips cells between events.
    const [i0, j0] = state.last || at;
    const steps = Math.max(Math.abs(at[0] - i0), Math.abs(at[1] - j0), 1);
    for (let k = 0; k <= steps; k++) {
      paint(Math.round(i0 + ((at[0] - i0) * k) / steps), Math.round(j0 + ((at[1] - j0) * k) / steps), erasing());
    }
    state.last = at;
    state.cursor = at;
    draw();
  }
  event.preventDefault();
}

function onKey(event) {
  const [, H, W] = shape();
  let [i, j] = state.cursor;
  const key = event.key;
  if (key === "ArrowUp") i = Math.max(0, i - 1);
  else if (key === "ArrowDown") i = Math.min(H - 1, i + 1);
  else if (key === "ArrowLeft") j = Math.max(0, j - 1);
  else if (key === "ArrowRight") j = Math.min(W - 1, j + 1);
  else if (key === " " || key === "Enter") paint(i, j, erasing());
  else if (key === "Delete" || key === "Backspace") {
    for (let c = 0; c < state.image.length; c++) state.image[c][i][j] = 0;
  } else if (key === "m" || key === "M") state.mask[i][j] = state.mask[i][j] ? 0 : 1;
  else return;
  state.cursor = [i, j];
  event.preventDefault();
  draw();
}

function setImage(levelsHW) {
  const [C, H, W] = shape();
  state.image = Array.from({ length: C }, () => levelsHW.map((row) => row.slice()));
  state.mask = Array.from({ length: H }, () => new Array(W).fill(1));
  draw();
}

async function pickExample() {
  const value = $("example").value;
  if (value === "") return;
  if (value === "sample") {
    const m = model();
    const r = await (await call("sample", { model: m.name, version: m.version, n: 1 })).json();
    setImage(r.samples[0][0]);
  } else {
    setImage(EXAMPLES[Number(value)]);
  }
}

function upload(file) {
  const [, H, W] = shape();
  const img = new Image();
  img.onload = () => {
    const off = document.createElement("canvas");
    off.width = W;
    off.height = H;
    const ctx = off.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    ctx.drawImage(img, 0, 0, W, H);
    const data = ctx.getImageData(0, 0, W, H).data;
    const lum = [];
    let mean = 0;
    for (let k = 0; k < W * H; k++) {
      const v = 0.299 * data[4 * k] + 0.587 * data[4 * k + 1] + 0.114 * data[4 * k + 2];
      lum.push(v);
      mean += v / (W * H);
    }
    const top = levels() - 1;
    const dark = mean > 127; // dark strokes on a light background: ink is the dark part
    const out = [];
    for (let i = 0; i < H; i++) {
      out.push([]);
      for (let j = 0; j < W; j++) {
        const v = lum[i * W + j] / 255;
        out[i].push(Math.round((dark ? 1 - v : v) * top));
      }
    }
    setImage(out);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
}

function inputs() {
  return [state.image];
}

// --- score ----------------------------------------------------------------------------
async function score() {
  const m = model();
  const body = { model: m.name, version: m.version, inputs: inputs(), all_outlier_methods: true };
  const result = await (await call("log-likelihood", body)).json();
  const row = result.results[0];
  const out = $("score-out");
  out.textContent = "";
  const h = document.createElement("h3");
  h.textContent = "Score";
  const p = document.createElement("p");
  p.id = "ll";
  p.textContent =
    `log-likelihood ${row.log_likelihood.toFixed(2)} nats` +
    (row.bits_per_dim !== undefined ? `, ${row.bits_per_dim.toFixed(3)} bits/dim` : "") +
    ` (${result.estimator})`;
  out.append(h, p);
  if (row.label_posterior) {
    const chart = document.createElement("div");
    chart.className = "bars";
    chart.id = "posterior";
    chart.setAttribute("role", "list");
    chart.setAttribute("aria-label", "Class posterior");
    for (const [label, prob] of Object.entries(row.label_posterior)) {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("role", "listitem");
      bar.dataset.label = label;
      bar.dataset.p = String(prob);
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${(100 * prob).toFixed(1)}%`;
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = prob.toFixed(3);
      bar.append(name, fill, value);
      chart.append(bar);
    }
    const cap = document.createElement("p");
    cap.textContent = `most probable class: ${row.predicted_label}`;
    out.append(chart, cap);
  }
  const verdicts = row.outliers || (row.outlier ? [row.outlier] : []);
  if (verdicts.length) {
    const table = document.createElement("table");
    table.id = "outliers";
    const caption = document.createElement("caption");
    caption.textContent = `Outlier verdicts (default method: ${row.outlier.method})`;
    table.append(caption);
    const head = table.insertRow();
    for (const t of ["method", "p-value", "verdict"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = t;
      head.append(th);
    }
    for (const v of verdicts) {
      const tr = table.insertRow();
      tr.insertCell().textContent = v.method + (v.method === row.outlier.method ? " (default)" : "");
      tr.insertCell().textContent = v.p_value.toPrecision(3);
      tr.insertCell().textContent = v.is_outlier ? `outlier (p ≤ ${v.alpha})` : "typical";
    }
    out.append(table);
  }
}

// --- complete / reconstruct ---------------------------------------------------------------
function drawLevels(canvas, image, mask) {
  const [, H, W] = shape();
  const ctx = canvas.getContext("2d");
  const cell = canvas.width / W;
  const top = levels() - 1;
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      const grey = 255 - Math.round((255 * image[0][i][j]) / top);
      ctx.fillStyle = `rgb(${grey},${grey},${grey})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
      if (mask && !mask[i][j]) {
        ctx.fillStyle = "rgba(200,0,0,0.25)";
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
  }
}

async function complete() {
  const m = model();
  const body = { model: m.name, version: m.version, inputs: inputs() };
  // Families that fill in erased pixels (the others reconstruct the whole drawing).
  const pixelcnn = ["pixelcnn", "diffusion"].includes(state.detail.family);
  if (pixelcnn) {
    body.mask = [state.image.map(() => state.mask)];
    const s = numberOrUndefined("seed");
    if (s !== undefined) body.seed = s;
  }
  const labels = parseLabels($("labels").value);
  if (typeof labels !== "object" && labels !== undefined && state.detail.conditional) body.labels = labels;
  const result = await (await call("reconstruct", body)).json();
  const out = $("complete-out");
  out.textContent = "";
  const h = document.createElement("h3");
  h.textContent = pixelcnn ? "Completion" : "Reconstruction";
  const pair = document.createElement("div");
  pair.className = "row";
  const before = document.createElement("canvas");
  const after = document.createElement("canvas");
  for (const [c, name] of [
    [before, "input"],
    [after, pixelcnn ? "completion" : "reconstruction"],
  ]) {
    c.width = 128;
    c.height = 128;
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", name);
    const figure = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = name;
    figure.append(c, cap);
    pair.append(figure);
  }
  after.id = "completion";
  drawLevels(before, inputs()[0], pixelcnn ? state.mask : null);
  drawLevels(after, result.outputs.reconstruction[0], null);
  const p = document.createElement("p");
  p.id = "complete-info";
  let text = result.description;
  if (result.labels) {
    text += `. Class used: ${result.labels[0]}`;
    if (result.label_probability) text += ` (inferred, posterior probability ${result.label_probability[0].toFixed(3)})`;
  }
  if (result.seed !== null) text += `; seed ${result.seed}`;
  p.textContent = text;
  out.append(h, pair, p);
}

// --- wiring ---------------------------------------------------------------------------
// Every action marks the page busy (aria-busy) until its answer is drawn, so assistive
// technology, and the browser tests, can tell a finished action from one in flight.
let pending = 0;
function guard(fn) {
  return (event) => {
    if (event && event.preventDefault && event.type === "submit") event.preventDefault();
    pending += 1;
    document.body.setAttribute("aria-busy", "true");
    fn(event)
      .catch((error) => {
        // API errors are in the error box already; anything else (a network failure, a
        // bug in the page) would otherwise vanish, leaving a page that seems to do nothing.
        if (error && error.shown) return;
        console.error(error);
        showError({ title: "The page failed", detail: String(error) });
      })
      .finally(() => {
        pending -= 1;
        if (pending === 0) document.body.removeAttribute("aria-busy");
      });
  };
}

function init() {
  $("token").value = state.token;
  $("token-save").addEventListener("click", guard(async () => {
    state.token = $("token").value;
    window.sessionStorage.setItem("genserve-token", state.token);
    await loadModels();
  }));
  $("model").addEventListener("change", guard(chooseModel));
  $("sample-form").addEventListener("submit", guard(async () => sample(numberOrUndefined("seed"))));
  $("again").addEventListener("click", guard(async () => sample(state.seed)));
  const canvas = $("canvas");
  for (const kind of ["pointerdown", "pointermove"]) canvas.addEventListener(kind, onPointer);
  for (const kind of ["pointerup", "pointercancel"]) canvas.addEventListener(kind, () => (state.painting = false));
  canvas.addEventListener("keydown", onKey);
  canvas.addEventListener("focus", draw);
  canvas.addEventListener("blur", draw);
  $("level").addEventListener("input", () => ($("level-out").textContent = $("level").value));
  $("clear").addEventListener("click", () => {
    const [, H, W] = shape();
    setImage(Array.from({ length: H }, () => new Array(W).fill(0)));
  });
  $("unmask").addEventListener("click", () => {
    const [, H, W] = shape();
    state.mask = Array.from({ length: H }, () => new Array(W).fill(1));
    draw();
  });
  $("example").addEventListener("change", guard(pickExample));
  $("upload").addEventListener("change", () => {
    if ($("upload").files.length) upload($("upload").files[0]);
  });
  $("score").addEventListener("click", guard(score));
  $("complete").addEventListener("click", guard(complete));
  guard(loadModels)();
}

document.addEventListener("DOMContentLoaded", init);
