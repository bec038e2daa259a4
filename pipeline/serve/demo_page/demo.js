// The page of `make demo`: draw, send, show every layer. Plain DOM, no build step.
// The server (serve/demo_app.py) does the arithmetic with the run's logged network; this
// only draws what it answers. window.demo holds the last answer (read by the browser test).
"use strict";

const $ = (id) => document.getElementById(id);
const SHOWN = 16; // units drawn per hidden layer
const demo = (window.demo = { runId: null, info: null, last: null, request: null, weights: {} });

// ---- talking to the server ----------------------------------------------------------
async function api(path, body) {
  const init = body ? { method: "POST", headers: { "Content-Type": "application/json" },
                        body: JSON.stringify(body) } : {};
  const response = await fetch(path, init);
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

let inFlight = false, pending = null;
async function predict(request) {
  // One request at a time; while one is out, only the newest waiting one is kept.
  demo.request = request;
  demo.busy = true;  // until the answer to the newest request is shown
  if (inFlight) { pending = request; return; }
  inFlight = true;
  const started = performance.now(), runId = demo.runId;
  try {
    const answer = await api(`/api/runs/${runId}/predict`, request);
    if (runId !== demo.runId) return;  // another run was chosen meanwhile: it asks anew
    demo.last = answer;
    await show(answer);
    $("error").textContent = "";
    $("timing").textContent = `round trip ${(performance.now() - started).toFixed(0)} ms`;
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    inFlight = false;
    demo.busy = pending !== null || queued;
    if (pending) { const next = pending; pending = null; predict(next); }
  }
}

// ---- the drawing ----------------------------------------------------------------------
const canvas = $("canvas"), pen = canvas.getContext("2d");
function clearCanvas() { pen.fillStyle = "#000"; pen.fillRect(0, 0, canvas.width, canvas.height); }
clearCanvas();

function drawing() {
  // The canvas averaged over 5×5 blocks: 56×56 ink values in [0, 1].
  const { data } = pen.getImageData(0, 0, canvas.width, canvas.height);
  const side = canvas.width / 5, rows = [];
  for (let r = 0; r < side; r++) {
    const row = [];
    for (let c = 0; c < side; c++) {
      let sum = 0;
      for (let y = 0; y < 5; y++)
        for (let x = 0; x < 5; x++) sum += data[((r * 5 + y) * canvas.width + (c * 5 + x)) * 4];
      row.push(Math.round((sum / 25 / 255) * 1000) / 1000);
    }
    rows.push(row);
  }
  return rows;
}

let drawingNow = false, last = null, queued = false;
function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}
function sendDrawing() {
  if (queued) return;
  queued = true;
  demo.busy = true;
  requestAnimationFrame(() => { queued = false; predict({ drawing: drawing() }); });
}
canvas.addEventListener("pointerdown", (e) => {
  drawingNow = true; last = point(e); canvas.setPointerCapture(e.pointerId);
  $("truth").textContent = "";
});
canvas.addEventListener("pointermove", (e) => {
  if (!drawingNow) return;
  const p = point(e);
  pen.strokeStyle = "#fff"; pen.lineWidth = 20; pen.lineCap = "round"; pen.lineJoin = "round";
  pen.beginPath(); pen.moveTo(...last); pen.lineTo(...p); pen.stroke();
  last = p;
  sendDrawing();
});
const endStroke = () => { if (drawingNow) { drawingNow = false; sendDrawing(); } };
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function paintPixels(target, pixels, colour) {
  // pixels: side² values drawn as a side×side image on the target canvas.
  const side = Math.round(Math.sqrt(pixels.length));
  const small = document.createElement("canvas");
  small.width = small.height = side;
  const ctx = small.getContext("2d"), image = ctx.createImageData(side, side);
  pixels.forEach((v, i) => {
    const [r, g, b] = colour(v);
    image.data.set([r, g, b, 255], i * 4);
  });
  ctx.putImageData(image, 0, 0);
  const out = target.getContext("2d");
  out.imageSmoothingEnabled = false;
  out.drawImage(small, 0, 0, target.width, target.height);
}
const grey = (v) => [v * 255, v * 255, v * 255];

async function loadSample(kind) {
  const sample = await api(`/api/runs/${demo.runId}/sample?kind=${kind}`);
  paintPixels(canvas, sample.pixels, grey);
  $("truth").textContent = sample.label === null ? "uniform noise in [0, 1]"
    : `test image ${sample.index}: labelled ${sample.label}`;
  predict({ pixels: sample.pixels });
}
$("clear").onclick = () => { clearCanvas(); $("truth").textContent = ""; predict({ drawing: drawing() }); };
const report = (e) => { $("error").textContent = e.message; };
$("test-image").onclick = () => loadSample("test").catch(report);
$("noise").onclick = () => loadSample("noise").catch(report);

// ---- what the network does with it ----------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A unit is lit as brightly as it is active, as the lesson draws it: on the dark panel an
// activation of 0 is the panel's own dark and 1 is white (between, the mix of the two). The
// answer, the brightest output, is ringed and labelled in the accent colour; the rest dim.
const DARK = [14, 22, 32], LIT = [255, 255, 255];  // #0e1620 (demo.css: #network) and white
const lit = (a) => `rgb(${DARK.map((d, i) => Math.round(d + (LIT[i] - d) * a)).join(",")})`;

function drawNetwork(answer) {
  // Columns: hidden layers (their 16 most active units when wider), then the outputs.
  const svg = $("network");
  svg.replaceChildren();
  const layers = answer.hidden.map((h, i) => ({
    title: h.size > SHOWN ? `hidden ${i + 1} (top ${SHOWN}/${h.size})` : `hidden ${i + 1}`,
    units: (h.size > SHOWN ? h.top : h.units.map((_, j) => j)).map((j) => [j, h.units[j]]),
  }));
  layers.push({ title: "output", units: answer.outputs.map((v, j) => [j, v]), output: true });
  const width = 560, height = 420, columns = layers.length, left = 170;
  const glow = el("filter", { id: "glow", x: "-50%", y: "-50%", width: "200%", height: "200%" });
  glow.append(el("feGaussianBlur", { stdDeviation: 4 }));
  const defs = el("defs", {});
  defs.append(glow);
  svg.append(defs);
  // The input first, as the picture the network gets (its 784 activations a⁰).
  svg.append(el("image", { href: $("seen").toDataURL(), x: 10, y: height / 2 - 50, width: 100,
                           height: 100 }));
  svg.append(el("rect", { x: 10, y: height / 2 - 50, width: 100, height: 100, class: "frame" }));
  svg.append(el("text", { x: 60, y: height / 2 - 58, "text-anchor": "middle", "font-size": 11 },
                `input: ${answer.input.length} pixels`));
  const positions = layers.map((layer, c) => {
    const x = left + (c * (width - left - 60)) / Math.max(1, columns - 1);
    const step = (height - 50) / layer.units.length;
    return layer.units.map((_, k) => [x, 40 + step * (k + 0.5)]);
  });
  for (const [x2, y2] of positions[0])  // faint wiring: the input to the first layer…
    svg.append(el("line", { x1: 110, y1: height / 2, x2, y2, class: "wire" }));
  for (let c = 1; c < columns; c++)  // …and between the shown units
    for (const [x1, y1] of positions[c - 1])
      for (const [x2, y2] of positions[c])
        svg.append(el("line", { x1, y1, x2, y2, class: "wire" }));
  layers.forEach((layer, c) => {
    svg.append(el("text", { x: positions[c][0][0], y: 18, "text-anchor": "middle",
                            "font-size": 11 }, layer.title));
    const top = layer.output ? answer.prediction : -1;
    // Brightness is the activation; unbounded ones (ReLU) relative to the layer's largest.
    const brightest = Math.max(1, ...layer.units.map(([, v]) => v));
    layer.units.forEach(([j, v], k) => {
      const [x, y] = positions[c][k], r = layer.output ? 13 : 9;
      const brightness = Math.max(0, Math.min(1, v / brightest));
      if (j === top) svg.append(el("circle", { cx: x, cy: y, r: r + 4, class: "halo" }));
      const dot = el("circle", { cx: x, cy: y, r, fill: lit(brightness),
        class: j === top ? "unit answer" : "unit", "data-layer": c, "data-unit": j,
        "data-value": v.toFixed(4), "data-brightness": brightness.toFixed(3) });
      dot.append(el("title", {}, `unit ${j}: ${v.toFixed(4)}`));
      svg.append(dot);
      if (layer.output)
        svg.append(el("text", { x: x + 21, y: y + (j === top ? 6 : 4),
          class: j === top ? "digit answer" : "digit", "data-digit": j }, `${j}`));
    });
  });
}

async function showWeights(answer) {
  // The first hidden layer's shown units: what each one's incoming weights look like.
  const first = answer.hidden[0];
  if (!first) { $("weights").replaceChildren(); return; }
  const units = first.size > SHOWN ? first.top : first.units.map((_, j) => j).slice(0, SHOWN);
  const cache = demo.weights[demo.runId] || (demo.weights[demo.runId] = { units: {} });
  const missing = units.filter((u) => !(u in cache.units));
  if (missing.length) {
    const got = await api(`/api/runs/${demo.runId}/weights?units=${missing.join(",")}`);
    got.units.forEach((u, i) => { cache.units[u] = got.weights[i]; });
    cache.scale = got.scale;
  }
  const figures = units.map((u) => {
    const figure = document.createElement("figure");
    const image = document.createElement("canvas");
    image.width = image.height = 28;
    const s = cache.scale || 1;
    paintPixels(image, cache.units[u], (w) => w >= 0
      ? [255, 255 * (1 - w / s), 255 * (1 - w / s)] : [255 * (1 + w / s), 255 * (1 + w / s), 255]);
    const caption = document.createElement("figcaption");
    caption.textContent = `unit ${u}: ${first.units[u].toFixed(2)}`;
    figure.append(image, caption);
    return figure;
  });
  $("weights").replaceChildren(...figures);
}

async function show(answer) {
  paintPixels($("seen"), answer.input, grey);
  drawNetwork(answer);
  $("answer").textContent = answer.prediction;
  $("outputs").replaceChildren(...answer.outputs.map((v, j) => {
    const item = document.createElement("li");
    item.dataset.digit = j;
    item.dataset.value = v.toFixed(4);
    item.textContent = `${j}: ${v.toFixed(3)}`;
    if (j === answer.prediction) item.className = "top";
    return item;
  }));
  await showWeights(answer);
}

// ---- runs ---------------------------------------------------------------------------
async function openRun(id) {
  const info = await api(`/api/runs/${id}`);
  demo.runId = id;
  demo.info = info;
  $("run-config").textContent = `${info.sizes.join("-")} ${info.activation}, ${info.cost}`;
  $("val").textContent = info.val_accuracy == null ? "–" : info.val_accuracy.toFixed(4);
  $("test").textContent = info.test_accuracy == null ? "–" : info.test_accuracy.toFixed(4);
  // no MLflow UI serves the store: say how to start one rather than link to a dead port
  $("run-link").hidden = !info.link;
  $("run-link").href = info.link || "";
  $("no-ui").hidden = Boolean(info.link);
  // The same picture for the newly chosen network: compare what they do with it.
  predict(demo.request || { drawing: drawing() });
}

async function start() {
  const { current, runs } = await api("/api/runs");
  const select = $("run-select");
  const listed = runs.some((r) => r.id === current) ? runs : [{ id: current, name: current }, ...runs];
  select.replaceChildren(...listed.map((r) => {
    const option = document.createElement("option");
    option.value = r.id;
    const accuracy = r.test_accuracy == null ? "" : ` (test ${r.test_accuracy.toFixed(4)})`;
    option.textContent = `${r.name}${accuracy}`;
    return option;
  }));
  select.value = current;
  select.onchange = () => openRun(select.value).catch((e) => { $("error").textContent = e.message; });
  await openRun(current);
}
start().catch((e) => { $("error").textContent = e.message; });
