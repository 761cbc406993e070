// The magsd serve page: sends each chosen image to POST /api/v1/predict?heatmap=true and draws
// the answer (probability bars, predicted class, attention heatmap with an opacity slider,
// attention boxes, operating-point decisions, time taken, the decoder's warnings). An image the
// server flags as unusual gets a banner saying its prediction is not meaningful, with the reasons.
// Errors (an unreadable file, a model whose output is not finite) appear next to the image they
// concern.
"use strict";

const $ = (id) => document.getElementById(id);
const results = $("results");
const opacity = $("opacity");
const views = []; // { canvas, gray, heat, boxes, scale }

function token() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function loadImage(src) {
  return new Promise((ok, fail) => {
    const i = new Image();
    i.onload = () => ok(i);
    i.onerror = fail;
    i.src = src;
  });
}

function draw(v) {
  const c = v.canvas.getContext("2d");
  c.globalAlpha = 1;
  c.drawImage(v.gray, 0, 0);
  c.globalAlpha = opacity.value / 100;
  c.drawImage(v.heat, 0, 0);
  c.globalAlpha = 1;
  c.strokeStyle = "#00e640";
  c.lineWidth = 2;
  for (const b of v.boxes) {
    c.strokeRect(b.x0 * v.scale, b.y0 * v.scale, (b.x1 - b.x0) * v.scale, (b.y1 - b.y0) * v.scale);
  }
}

opacity.addEventListener("input", () => views.forEach(draw));

function showError(box, message) {
  box.classList.add("error");
  box.dataset.state = "error";
  box.querySelector(".info").appendChild(el("p", "message", message));
  box.querySelector(".status").remove();
}

async function render(box, r) {
  const info = box.querySelector(".info");
  const [gray, heat] = await Promise.all([
    loadImage("data:image/png;base64," + r.image_png),
    loadImage("data:image/png;base64," + r.heatmap_png),
  ]);
  const canvas = box.querySelector("canvas");
  canvas.width = gray.width;
  canvas.height = gray.height;
  canvas.hidden = false;
  const v = { canvas, gray, heat, boxes: r.boxes, scale: gray.width / r.width };
  views.push(v);
  draw(v);
  if (r.unusual) {
    box.classList.add("unusual");
    const banner = info.appendChild(el("div", "banner", r.warning));
    banner.setAttribute("role", "alert");
    const why = banner.appendChild(el("ul"));
    for (const reason of r.unusual_reasons) why.appendChild(el("li", "", reason));
  }
  info.appendChild(el("p", "predicted", "Predicted: ")).appendChild(el("strong", "", r.predicted));
  for (const [name, p] of Object.entries(r.probabilities)) {
    const row = el("div", name === r.predicted ? "bar top" : "bar");
    row.appendChild(el("span", "name", name));
    const track = row.appendChild(el("span", "track"));
    track.appendChild(el("span", "fill")).style.width = (100 * p).toFixed(1) + "%";
    row.appendChild(el("span", "value", (100 * p).toFixed(1) + " %"));
    info.appendChild(row);
  }
  for (const d of r.decisions) info.appendChild(el("p", d.positive ? "decision positive" : "decision", d.text));
  const t = r.timings_ms;
  const meta = el("p", "meta",
    `${r.format} ${r.width}×${r.height}; ${r.boxes.length} attention box(es); ` +
    `time ${t.total.toFixed(0)} ms (preprocess ${t.preprocess.toFixed(0)}, queue ${t.queue.toFixed(0)}, ` +
    `model ${t.inference.toFixed(0)} in a batch of ${r.batch_size})`);
  meta.classList.add("timing");
  info.appendChild(meta);
  for (const w of r.warnings || []) info.appendChild(el("p", "warning", "Warning: " + w));
  box.querySelector(".status").remove();
  box.dataset.state = r.unusual ? "unusual" : "done";
}

async function predict(file) {
  const box = el("div", "result");
  box.dataset.state = "pending";
  const canvas = el("canvas");
  canvas.hidden = true;
  box.appendChild(canvas);
  const info = box.appendChild(el("div", "info"));
  info.appendChild(el("h3", "", file.name));
  info.appendChild(el("p", "status", "analysing…"));
  results.prepend(box);
  try {
    const res = await fetch("/api/v1/predict?heatmap=true&filename=" + encodeURIComponent(file.name), {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/octet-stream" }, token()),
      body: file,
    });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      if (res.status === 401) $("token-row").hidden = false;
      showError(box, (body && body.error) || `HTTP ${res.status}`);
      return;
    }
    await render(box, body.results[0]);
  } catch (e) {
    showError(box, "request failed: " + e);
  }
}

function handle(files) {
  for (const f of files) predict(f);
}

$("files").addEventListener("change", (e) => { handle(e.target.files); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });

function row(table, k, v) {
  const tr = table.appendChild(el("tr"));
  tr.appendChild(el("th", "", k));
  tr.appendChild(el("td", "", v));
}

async function loadCard() {
  const body = $("card-body");
  const res = await fetch("/api/v1/model", { headers: token() });
  if (res.status === 401) {
    $("token-row").hidden = false;
    body.textContent = "This server needs a token: enter it above, then reload the model card.";
    return;
  }
  const c = await res.json();
  body.textContent = "";
  const t = body.appendChild(el("table"));
  row(t, "classes", c.classes.join(", "));
  row(t, "network", `MAG-SD, ${c.backbone} backbone, ${c.attention_maps} attention maps, scales ${c.scales}, ${c.head} head`);
  row(t, "input", `${c.input_size}×${c.input_size} gray`);
  row(t, "preprocessing", [c.preprocessing.resize, c.preprocessing.clahe ? "CLAHE " + c.preprocessing.clahe : "no CLAHE", "z-score " + c.preprocessing.zscore].join("; "));
  row(t, "device", c.device);
  row(t, "probabilities", c.reliability.probabilities);
  row(t, "unusual inputs", c.reliability.unusual_inputs);
  for (const p of c.reliability.operating_points) {
    row(t, "operating point", `${p.class}: positive when p ≥ ${p.threshold.toFixed(4)} (${Math.round(100 * p.target.value)} % ${p.target.metric})`);
  }
  if (c.training) {
    row(t, "training data", `${c.training.data} (classes ${c.training.classes.join(", ")})`);
    const cv = c.training.cross_validation;
    if (cv) {
      for (const [k, m] of Object.entries(cv.mean_std)) {
        row(t, `${cv.folds.length}-fold CV ${k}`, `${(100 * m.mean).toFixed(1)} ± ${(100 * m.std).toFixed(1)} %`);
      }
    } else {
      row(t, "validation", c.training.folds ? `${c.training.folds}-fold run` : "final model (no held-out folds in its run)");
    }
  } else {
    row(t, "training data", "unknown (no run folder beside the model)");
  }
  body.appendChild(el("p", "notice", c.intended_use));
}

$("token").addEventListener("change", loadCard);
loadCard();
