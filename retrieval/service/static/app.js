// The page: pick or drop a photo, drag a box on it, search the index or compare two photos.
// Plain JavaScript, no build step, nothing fetched from anywhere but this service.
"use strict";

const MAX_SIDE = 2048;          // photos are sent as the browser shows them: upright, at most this many pixels
let maxUploadBytes = 10 * 2 ** 20;

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function callApi(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("The service did not answer: is it still running?");
  }
  let body = null;
  try { body = await response.json(); } catch (error) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// One photo with an optional box drawn by dragging on it.
class PhotoPicker {
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;
    this.drop = $(".drop", root);
    this.stage = $(".stage", root);
    this.canvas = $(".canvas", root);
    this.line = $(".box-line", root);
    this.text = $(".box-text", root);
    this.clear = $(".clear-box", root);
    this.image = null;      // an ImageBitmap, upright
    this.box = null;        // [left, top, width, height] in image pixels
    this.drag = null;
    $(".file", root).addEventListener("change", (event) => this.load(event.target.files[0]));
    $(".replace", root).addEventListener("click", () => $(".file", root).click());
    this.clear.addEventListener("click", () => { this.box = null; this.render(); this.changed(); });
    for (const name of ["dragenter", "dragover"]) {
      root.addEventListener(name, (event) => { event.preventDefault(); this.drop.classList.add("over"); });
    }
    root.addEventListener("dragleave", () => this.drop.classList.remove("over"));
    root.addEventListener("drop", (event) => {
      event.preventDefault();
      this.drop.classList.remove("over");
      if (event.dataTransfer.files.length) this.load(event.dataTransfer.files[0]);
    });
    this.drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $(".file", root).click(); }
    });
    this.canvas.addEventListener("pointerdown", (event) => this.start(event));
    this.canvas.addEventListener("pointermove", (event) => this.move(event));
    this.canvas.addEventListener("pointerup", (event) => this.end(event));
    this.canvas.addEventListener("pointercancel", () => { this.drag = null; this.render(); });
    this.canvas.tabIndex = 0;
    this.canvas.addEventListener("keydown", (event) => this.key(event));
    window.addEventListener("resize", () => this.layout());
  }

  get ready() { return this.image !== null; }

  async load(file) {
    if (!file) return;
    try {
      this.image = await createImageBitmap(file);
    } catch (error) {
      this.image = null;
      this.showError(`${file.name}: the browser cannot read this file as an image`);
      return;
    }
    this.name = file.name;
    this.box = null;
    this.drop.hidden = true;
    this.stage.hidden = false;
    this.line.hidden = false;
    this.layout();
    this.changed();
  }

  showError(message) {
    this.drop.hidden = false;
    this.stage.hidden = true;
    this.line.hidden = true;
    $(".drop-title", this.root).textContent = message;
    this.changed();
  }

  changed() { if (this.onChange) this.onChange(this); }

  layout() {
    if (!this.image) return;
    const width = this.stage.clientWidth || 320;
    const scale = Math.min(width / this.image.width, 440 / this.image.height, 4);
    this.scale = scale;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.style.width = `${Math.round(this.image.width * scale)}px`;
    this.canvas.style.height = `${Math.round(this.image.height * scale)}px`;
    this.canvas.width = Math.round(this.image.width * scale * ratio);
    this.canvas.height = Math.round(this.image.height * scale * ratio);
    this.render();
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) / rect.width * this.image.width;
    const y = (event.clientY - rect.top) / rect.height * this.image.height;
    return [Math.max(0, Math.min(this.image.width, x)), Math.max(0, Math.min(this.image.height, y))];
  }

  start(event) {
    if (!this.image) return;
    this.canvas.setPointerCapture(event.pointerId);
    this.drag = { from: this.point(event), to: this.point(event) };
  }

  move(event) {
    if (!this.drag) return;
    this.drag.to = this.point(event);
    this.render();
  }

  end(event) {
    if (!this.drag) return;
    this.drag.to = this.point(event);
    const box = this.dragBox();
    this.drag = null;
    // a click (or a box under a few screen pixels) keeps the previous box
    if (box[2] * this.scale >= 6 && box[3] * this.scale >= 6) this.box = box;
    this.render();
    this.changed();
  }

  // Keyboard: arrows move the box (one is drawn in the middle first), Shift+arrows resize it, Escape clears it.
  key(event) {
    if (!this.image || this.drag) return;
    const { width, height } = this.image;
    if (event.key === "Escape" || event.key === "Delete") {
      if (!this.box) return;
      this.box = null;
    } else if (event.key.startsWith("Arrow") || event.key === "Enter") {
      const step = Math.max(1, Math.round(Math.min(width, height) / 20));
      const dx = { ArrowLeft: -step, ArrowRight: step }[event.key] || 0;
      const dy = { ArrowUp: -step, ArrowDown: step }[event.key] || 0;
      let [x, y, w, h] = this.box || [width / 4, height / 4, width / 2, height / 2];  // the first key draws it
      if (this.box && event.shiftKey) {
        w = Math.max(step, Math.min(width - x, w + dx));
        h = Math.max(step, Math.min(height - y, h + dy));
      } else if (this.box) {
        x = Math.max(0, Math.min(width - w, x + dx));
        y = Math.max(0, Math.min(height - h, y + dy));
      }
      this.box = [x, y, w, h];
    } else {
      return;
    }
    event.preventDefault();
    this.render();
    this.changed();
  }

  dragBox() {
    const [x0, y0] = this.drag.from, [x1, y1] = this.drag.to;
    return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
  }

  render() {
    const context = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    context.clearRect(0, 0, width, height);
    context.drawImage(this.image, 0, 0, width, height);
    const box = this.drag ? this.dragBox() : this.box;
    if (box) {
      const k = width / this.image.width;
      const [x, y, w, h] = box.map((v) => v * k);
      context.save();
      context.fillStyle = "rgba(15, 23, 42, 0.55)";
      context.beginPath();
      context.rect(0, 0, width, height);
      context.rect(x, y, w, h);
      context.fill("evenodd");
      context.lineWidth = 2 * (window.devicePixelRatio || 1);
      context.strokeStyle = "#ffffff";
      context.setLineDash(this.drag ? [6, 4] : []);
      context.strokeRect(x, y, w, h);
      context.restore();
    }
    const shown = this.box && !this.drag;
    this.clear.hidden = !shown;
    this.text.textContent = shown
      ? `Box ${this.box.map(Math.round).slice(0, 2).join(", ")} · ${Math.round(this.box[2])} × ${Math.round(this.box[3])} px`
      : `Whole photo (${this.image.width} × ${this.image.height}) · drag on it to draw a box, or use the arrow keys`;
  }

  // The photo as the browser shows it (upright, at most MAX_SIDE pixels, JPEG) and the box in its pixels.
  async upload() {
    const shrink = Math.min(1, MAX_SIDE / Math.max(this.image.width, this.image.height));
    const canvas = element("canvas");
    canvas.width = Math.max(1, Math.round(this.image.width * shrink));
    canvas.height = Math.max(1, Math.round(this.image.height * shrink));
    const context = canvas.getContext("2d");
    context.fillStyle = "#ffffff";  // transparency becomes white, as the server does it
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(this.image, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.95));
    if (blob.size > maxUploadBytes) {
      throw new Error(`This photo is ${(blob.size / 2 ** 20).toFixed(1)} MB, over the service's ` +
                      `${(maxUploadBytes / 2 ** 20).toFixed(0)} MB limit`);
    }
    const bbox = this.box ? this.box.map((v) => Math.round(v * shrink)) : null;
    if (bbox) { bbox[2] = Math.max(1, bbox[2]); bbox[3] = Math.max(1, bbox[3]); }
    return { blob, bbox: bbox ? bbox.join(",") : "" };
  }
}

function setBusy(button, busy, label) {
  button.disabled = busy;
  button.classList.toggle("busy", busy);
  if (label) button.textContent = label;
}

function showMessage(node, kind, html) {
  node.className = `message ${kind}`;
  node.hidden = false;
  node.replaceChildren();
  if (typeof html === "string") node.textContent = html; else node.append(...html);
}

function percent(score) { return `${Math.round(score * 100)}%`; }

function matchCard(match) {
  const item = element("li", "match");
  const frame = element("div", "thumb");
  const image = element("img");
  image.src = match.image_url;
  image.alt = `Shop photo ${match.photo} of product ${match.product}`;
  image.loading = "lazy";
  image.addEventListener("error", () => frame.classList.add("missing"));
  frame.append(image, element("span", "rank", `#${match.rank}`));
  const body = element("div", "match-body");
  const bar = element("div", "bar");
  const fill = element("i");
  fill.style.width = percent(match.score);
  bar.append(fill);
  const scoreRow = element("div", "score-row");
  scoreRow.append(bar, element("span", "score", percent(match.score)));
  const details = element("div", "details", `${match.category} · dist ${match.distance.toFixed(3)}`);
  item.title = `Shop photo ${match.photo}: same-item score ${match.score.toFixed(3)}`;
  body.append(element("div", "product", `Product ${match.product}`), scoreRow, details);
  item.append(frame, body);
  return item;
}

function skeletons(grid, count) {
  grid.replaceChildren(...Array.from({ length: count }, () => {
    const item = element("li", "match skeleton");
    item.append(element("div", "thumb"), element("div", "match-body"));
    return item;
  }));
}

function setupSearch() {
  const form = $("#search-form"), go = $("#search-go"), grid = $("#results");
  const message = $("#search-message"), meta = $("#search-meta");
  const picker = new PhotoPicker($("#search-picker"), (p) => { go.disabled = !p.ready; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!picker.ready) return;
    const k = Number($("#k").value);
    const category = $("#category").value;
    setBusy(go, true, "Searching…");
    message.hidden = true;
    meta.textContent = "";
    skeletons(grid, Math.min(k, 10));
    try {
      const { blob, bbox } = await picker.upload();
      const data = new FormData();
      data.append("image", blob, picker.name || "photo.jpg");
      if (bbox) data.append("bbox", bbox);
      if (category) data.append("category", category);
      data.append("k", String(k));
      const result = await callApi("/api/search", { method: "POST", body: data });
      grid.replaceChildren(...result.matches.map(matchCard));
      const box = result.query.bbox;
      meta.textContent = `${result.matches.length} products · ${result.query.category || "all categories"} · ` +
                         (box ? `box ${box.map(Math.round).join(", ")}` : "whole photo") +
                         ` · ${Math.round(result.took_ms)} ms`;
      if (!result.matches.length) showMessage(message, "empty", "No shop product in this category.");
    } catch (error) {
      grid.replaceChildren();
      showMessage(message, "error", error.message);
    } finally {
      setBusy(go, false, "Find matches");
    }
  });
}

function verdictView(result) {
  const nodes = [];
  if (result.same === null) {
    nodes.push(element("p", "call neutral", "Score only"));
    nodes.push(element("p", "note", "This index has no trained head, so there is no calibrated threshold: " +
                                    "the score is 1 − cosine distance / 2."));
  } else {
    nodes.push(element("p", `call ${result.same ? "same" : "different"}`,
                       result.same ? "Same item" : "Different items"));
  }
  const gauge = element("div", "gauge");
  const fill = element("i");
  fill.style.width = percent(result.score);
  gauge.append(fill);
  const facts = element("dl", "facts");
  const rows = [["Score", percent(result.score)], ["Distance", result.distance.toFixed(4)]];
  if (result.threshold !== null) rows.push(["Same below", result.threshold.toFixed(4)]);
  rows.push(["Took", `${Math.round(result.took_ms)} ms`]);
  for (const [name, value] of rows) facts.append(element("dt", "", name), element("dd", "", value));
  nodes.push(gauge, facts);
  return nodes;
}

function setupCompare() {
  const go = $("#compare-go"), verdict = $("#verdict");
  const update = () => { go.disabled = !(a.ready && b.ready); };
  const a = new PhotoPicker($("#compare-a"), update);
  const b = new PhotoPicker($("#compare-b"), update);
  $("#compare-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setBusy(go, true, "Comparing…");
    verdict.replaceChildren(element("p", "verdict-idle", "Embedding both photos…"));
    try {
      const [left, right] = await Promise.all([a.upload(), b.upload()]);
      const data = new FormData();
      data.append("a", left.blob, a.name || "a.jpg");
      data.append("b", right.blob, b.name || "b.jpg");
      if (left.bbox) data.append("bbox_a", left.bbox);
      if (right.bbox) data.append("bbox_b", right.bbox);
      verdict.replaceChildren(...verdictView(await callApi("/api/compare", { method: "POST", body: data })));
    } catch (error) {
      verdict.replaceChildren(element("p", "message error", error.message));
    } finally {
      setBusy(go, false, "Compare");
    }
  });
  return [a, b];
}

function setupTabs(pickers) {
  const tabs = [$("#tab-search"), $("#tab-compare")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      for (const other of tabs) {
        const on = other === tab;
        other.setAttribute("aria-selected", String(on));
        document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
      }
      for (const picker of pickers) picker.layout();
    });
  }
}

async function loadIndex() {
  const status = $("#index-status"), select = $("#category");
  try {
    const [health, listing] = await Promise.all([callApi("/healthz"), callApi("/api/categories")]);
    maxUploadBytes = health.max_upload_mb * 2 ** 20;
    status.textContent = `${health.photos.toLocaleString()} shop photos · ${health.categories} categories` +
                         (health.head ? " · trained head" : " · raw vectors");
    status.classList.add("ok");
    for (const category of listing.categories) {
      const option = element("option", "", `${category.name} (${category.products.toLocaleString()} products)`);
      option.value = category.name;
      select.append(option);
    }
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("down");
  }
}

setupSearch();
setupTabs(setupCompare());
loadIndex();
