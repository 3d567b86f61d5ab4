/* The dashboard page: overview, latent table (sortable, filterable, paginated) and latent cards.
   Reads the JSON embedded in #dashboard-data; needs nothing from the network. */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("dashboard-data").textContent);
  const PAGE = 100;
  const SVGNS = "http://www.w3.org/2000/svg";
  const BOX_COLOURS = ["#39ff14", "#ff4fd8", "#ffd000"];  /* per concept; the first is the figures' ground-truth lime */
  const T = D.table;
  const N = T.id.length;
  const rowOf = new Map(T.id.map((j, r) => [j, r]));

  function el(tag, attrs, ...kids) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (k === "on") Object.entries(v).forEach(([n, f]) => e.addEventListener(n, f));
      else e.setAttribute(k, v);
    }
    kids.flat().forEach((c) => e.append(c instanceof Node ? c : document.createTextNode(String(c))));
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || v === "") return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(digits === undefined ? 4 : digits);
  }
  function table(header, rows, cls) {
    return el("table", cls ? { class: cls } : {}, el("thead", {}, el("tr", {}, header.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: fmt(c) })))))));
  }

  /* ------------------------------------------------------------------ overview */
  function curveChart(label, curves, lp) {
    const W = 420, H = 230, L = 44, R = 22, TOP = 12, B = 36;
    const ks = curves.on.map((p) => p[0]);
    const x = (i) => L + (i * (W - L - R)) / Math.max(ks.length - 1, 1);
    const all = [curves.on, curves.off, lp ? lp.on : [], lp ? lp.off : []].flat().map((p) => p[1]).filter((v) => v !== null);
    const lo = Math.min(0.4, ...all), hi = 1;
    const y = (v) => TOP + ((hi - v) * (H - TOP - B)) / (hi - lo);
    const svg = el("svg:svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "curve", "data-label": label });
    for (let t = Math.ceil(lo * 10) / 10; t <= hi + 1e-9; t += 0.1) {
      svg.append(el("svg:line", { x1: L, x2: W - R, y1: y(t), y2: y(t), stroke: "#eee" }),
        el("svg:text", { x: L - 4, y: y(t) + 4, "text-anchor": "end", "font-size": 10, text: t.toFixed(1) }));
    }
    ks.forEach((k, i) => svg.append(el("svg:text", { x: x(i), y: H - B + 14, "text-anchor": "middle", "font-size": 10, text: k })));
    svg.append(el("svg:text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11, text: "k (top-k latents per class)" }));
    const line = (pts, colour, dash, name) => {
      const byK = new Map(pts.map((p) => [p[0], p[1]]));
      const d = ks.map((k, i) => [i, byK.get(k)]).filter((p) => p[1] !== null && p[1] !== undefined)
        .map((p, n) => `${n ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      svg.append(el("svg:path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": dash || "", "data-series": name }));
    };
    if (curves.sae !== null && curves.sae !== undefined)
      svg.append(el("svg:line", { x1: L, x2: W - R, y1: y(curves.sae), y2: y(curves.sae), stroke: "#888", "stroke-dasharray": "3 3" }));
    line(curves.on, "#1f77b4", "", "activated");
    line(curves.off, "#d62728", "", "deactivated");
    if (lp) { line(lp.on, "#1f77b4", "6 4", "activated, linear probe"); line(lp.off, "#d62728", "6 4", "deactivated, linear probe"); }
    const legend = el("div", { class: "muted" }, "blue: top-k activated (only T_k kept) · red: deactivated (T_k removed) · grey dashed: SAE only",
      lp ? " · dashed: linear-probe pipeline" : "");
    return el("div", { class: "panel" }, el("h3", { text: `${label}: test AUROC vs k` }), svg, legend);
  }

  function overview() {
    const sec = document.getElementById("overview");
    const O = D.overview, M = D.meta;
    sec.append(el("p", {}, `${M.n_firing} of ${M.n_latents} latents fire on the ${M.n_images} cached images (grid ${M.grid.join("×")}). `,
      "Run: ", el("code", { text: M.run }), " · cache: ", el("code", { text: M.cache })));
    const cfg = O.config.cfg || {};
    const boxes = el("div", { class: "grid" });
    boxes.append(el("div", { class: "panel" }, el("h3", { text: "SAE config" }),
      table(["key", "value"], Object.entries(cfg).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, v]))));
    const last = O.config.last_metrics;
    if (last) boxes.append(el("div", { class: "panel" }, el("h3", { text: `Training, last logged step (${last.split || ""})` }),
      table(["key", "value"], Object.entries(last).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, v]))));
    const R = O.reconstruction;
    if (R) boxes.append(el("div", { class: "panel", id: "reconstruction" }, el("h3", { text: "Reconstruction (test images)" }),
      table(["FVU", "MSE", "mean L0", "dead", "dense", "ever active"], [[R.fvu, R.mse, R.l0, R.dead_fraction, R.dense_fraction, R.n_ever_active]])));
    if (O.gates) boxes.append(el("div", { class: "panel", id: "gates" }, el("h3", { text: "Quality gates" }),
      table(["gate", "value", "needs", "result", "note"], O.gates.map((g) => [g.name, g.value, g.bound,
        el("span", { class: g.passed ? "pass" : "fail", text: g.passed ? "PASS" : "FAIL" }), g.note || ""]))));
    sec.append(boxes);
    if (O.config.command) sec.append(el("p", {}, "Trained with ", el("code", { text: O.config.command.join(" ") })));
    const charts = el("div", { class: "grid", id: "curves" });
    for (const label of D.labels) {
      const C = O.concepts[label];
      const lp = O.comparison && O.comparison.curves ? O.comparison.curves[label] : null;
      if (C.curves) charts.append(curveChart(label, C.curves, lp));
      if (C.metrics) {
        const rows = [];
        for (const [unit, block] of Object.entries(C.metrics))
          for (const cond of ["raw", "sae", "sae+error"]) if (block[cond]) rows.push([unit, cond, block[cond].aucroc, block[cond].auprc]);
        charts.append(el("div", { class: "panel" }, el("h3", { text: `${label}: concept head` }), table(["unit", "features", "AUROC", "AUPRC"], rows)));
      }
    }
    sec.append(el("h3", { text: "Top-k latent interventions (the paper's Figure 2)" }), charts);
    if (O.comparison) sec.append(el("div", { class: "panel", id: "comparison" }, el("h3", { text: "Linear probe vs fine-tuned" }),
      table(O.comparison.header, O.comparison.rows)));
  }

  /* ------------------------------------------------------------------ latent table */
  const state = { sort: D.labels.length ? `score:${D.labels[0]}` : "freq", desc: true, page: 0, label: D.labels[0] || null,
    min: {}, text: "" };
  const HELP = {
    id: "latent index", name: "top prompt from name_latents", freq: "fraction of the cached images on which it fires somewhere",
    mean: "mean over the images of its spatial-mean activation", max: "largest activation on any position",
    score: "class-1 importance from the ranking files (concepts stage)", m0: "mean spatial-mean activation on class-0 training units",
    m1: "mean spatial-mean activation on class-1 training units",
    dauc: "test AUROC of the head through the SAE with this latent removed, minus with all latents",
    hit: "pointing game on the positive test images (visualize rules; – = not scored)", iou: "mean best IoU of its boxes with the ground truth",
  };
  function columns() {
    const c = [["id", "latent", "text"], ["name", "name", "text"], ["freq", "frequency"], ["mean", "mean act."], ["max", "max act."]];
    if (state.label) {
      const l = state.label;
      c.push([`score:${l}`, "class score"], [`m0:${l}`, "class 0 mean"], [`m1:${l}`, "class 1 mean"],
        [`dauc:${l}`, "ΔAUROC removed"], [`hit:${l}`, "hit rate"], [`iou:${l}`, "mean IoU"]);
    }
    return c;
  }
  function filtered() {
    const text = state.text.trim().toLowerCase();
    let rows = [];
    for (let r = 0; r < N; r++) {
      if (text && !String(T.id[r]).startsWith(text) && !T.name[r].toLowerCase().includes(text)) continue;
      let ok = true;
      for (const [key, v] of Object.entries(state.min)) {
        const x = T[key] ? T[key][r] : null;
        if (v !== null && !(x !== null && x >= v)) { ok = false; break; }
      }
      if (ok) rows.push(r);
    }
    const col = T[state.sort], sign = state.desc ? -1 : 1;
    rows.sort((a, b) => {
      const x = col[a], y = col[b];
      if (x === y) return T.id[a] - T.id[b];
      if (x === null) return 1; if (y === null) return -1;
      return (x < y ? -1 : 1) * sign;
    });
    return rows;
  }
  function drawTable() {
    const tab = document.getElementById("latent-table");
    const cols = columns();
    const head = el("tr", {}, cols.map(([key, name, cls]) => el("th", {
      "data-key": key, class: cls || "", title: HELP[key.split(":")[0]], text: name + (state.sort === key ? (state.desc ? " ▼" : " ▲") : ""),
      on: { click: () => { state.desc = state.sort === key ? !state.desc : true; state.sort = key; state.page = 0; drawTable(); } },
    })));
    const filters = el("tr", {}, cols.map(([key, , cls]) => el("th", { class: cls || "" }, cls ? "" : el("input", {
      type: "number", step: "any", placeholder: "≥", value: state.min[key] ?? "", "data-min": key,
      on: { change: (e) => { const v = e.target.value; state.min[key] = v === "" ? null : Number(v); state.page = 0; drawTable(); } },
    }))));
    tab.tHead.replaceChildren(head, filters);
    const rows = filtered();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * PAGE, (state.page + 1) * PAGE);
    tab.tBodies[0].replaceChildren(...shown.map((r) => el("tr", { "data-latent": T.id[r], on: { click: () => { location.hash = `latent=${T.id[r]}`; } } },
      cols.map(([key, , cls]) => el("td", { class: cls || "", text: key === "name" ? T.name[r] : fmt(T[key] ? T[key][r] : null) })))));
    tab.setAttribute("data-total", N);
    tab.setAttribute("data-filtered", rows.length);
    const pager = document.getElementById("pager");
    pager.replaceChildren(
      el("button", { text: "◀ previous", on: { click: () => { state.page = Math.max(0, state.page - 1); drawTable(); } } }),
      el("span", { text: `rows ${rows.length ? state.page * PAGE + 1 : 0}–${state.page * PAGE + shown.length} of ${rows.length} (${N} firing latents), page ${state.page + 1} of ${pages}` }),
      el("button", { text: "next ▶", on: { click: () => { state.page = Math.min(pages - 1, state.page + 1); drawTable(); } } }));
  }
  function controls() {
    const box = document.getElementById("controls");
    box.append(el("label", {}, "latent or name: ", el("input", { type: "search", id: "text-filter",
      on: { input: (e) => { state.text = e.target.value; state.page = 0; drawTable(); } } })));
    if (D.labels.length) box.append(el("label", {}, "concept: ", el("select", { id: "concept",
      on: { change: (e) => {  /* the sort and the filters follow the concept's columns */
        const swap = (key) => (key.includes(":") ? `${key.split(":")[0]}:${e.target.value}` : key);
        state.sort = swap(state.sort);
        state.min = Object.fromEntries(Object.entries(state.min).map(([k, v]) => [swap(k), v]));
        state.label = e.target.value; state.page = 0; drawTable();
      } } },
      D.labels.map((l) => el("option", { value: l, text: l })))));
    box.append(el("span", { class: "muted", text: "click a header to sort, type a minimum under it to filter, click a row to open its card" }));
  }

  /* ------------------------------------------------------------------ latent card */
  function decodeGrid(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function heatCanvas(bytes, offset) {
    const [h, w] = D.meta.grid;
    const c = el("canvas", { width: w, height: h, class: "heat" });
    const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
    for (let p = 0; p < h * w; p++) {
      const q = bytes[offset + p], rgb = D.lut[q];
      img.data.set([rgb[0], rgb[1], rgb[2], Math.round(q * 0.75)], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }
  function boxesSvg(hw, boxes, colour, dash) {
    const svg = el("svg:svg", { viewBox: `0 0 ${hw[1]} ${hw[0]}`, preserveAspectRatio: "none" });
    for (const [x1, y1, x2, y2] of boxes) svg.append(el("svg:rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "none",
      stroke: colour, "stroke-width": Math.max(1.5, hw[0] / 150), "stroke-dasharray": dash || "", "vector-effect": "non-scaling-stroke" }));
    return svg;
  }
  function histogram(r) {
    const counts = D.hist.counts[r], top = D.hist.max[r], W = 300, H = 120, B = 20;
    const m = Math.max(...counts, 1), bw = W / counts.length;
    const svg = el("svg:svg", { width: W, height: H + B, class: "hist" });
    counts.forEach((c, i) => svg.append(el("svg:rect", { class: "bar", x: i * bw + 1, width: bw - 2, y: H - (c / m) * H, height: (c / m) * H },
      el("svg:title", { text: `${c} images` }))));
    svg.append(el("svg:text", { x: 0, y: H + 14, "font-size": 10, text: "0" }),
      el("svg:text", { x: W, y: H + 14, "font-size": 10, "text-anchor": "end", text: fmt(top, 3) }));
    const zero = D.meta.n_images - counts.reduce((a, b) => a + b, 0);
    return el("div", { class: "panel" }, el("h3", { text: "Spatial-mean activation over the images where it fires" }), svg,
      el("div", { class: "muted", text: `${zero} of ${D.meta.n_images} images: never fires` }));
  }
  function card(j) {
    const r = rowOf.get(j), box = document.getElementById("card");
    if (r === undefined) {
      box.replaceChildren(el("button", { class: "close", text: "✕", on: { click: () => { location.hash = ""; } } }),
        el("h2", { text: `Latent ${j} never fires on the cached images` }));
      box.hidden = false; return;
    }
    const C = D.cards, names = D.names[String(j)] || [];
    const parts = [el("button", { class: "close", text: "✕", on: { click: () => { location.hash = ""; } } }),
      el("h2", { text: `Latent ${j}` + (T.name[r] ? ` — “${T.name[r]}”` : "") })];
    parts.push(el("p", {}, `fires on ${fmt(100 * T.freq[r], 1)} % of the images · mean activation ${fmt(T.mean[r])} · max ${fmt(T.max[r])}`));
    if (names.length) parts.push(el("div", { class: "panel", id: "prompts" }, el("h3", { text: "Prompt similarities (name_latents)" }),
      table(["prompt", "cosine"], names.map((p) => [p[0], p[1]]))));
    const rows = D.labels.map((l) => [l, T[`score:${l}`][r], T[`m0:${l}`][r], T[`m1:${l}`][r], T[`dauc:${l}`][r], T[`hit:${l}`][r], T[`iou:${l}`][r]]);
    const info = el("div", { class: "grid" });
    if (rows.length) info.append(el("div", { class: "panel", id: "card-concepts" }, el("h3", { text: "Per concept" }),
      table(["concept", "class-1 score", "class 0 mean", "class 1 mean", "ΔAUROC removed alone", "hit rate", "mean IoU"], rows),
      el("div", { class: "muted", text: "ΔAUROC: the head's test AUROC through the SAE with this latent removed, minus with all latents. Hit rate / IoU: box scores on the positive test images (– = not scored)." })));
    info.append(histogram(r));
    parts.push(info);
    const shots = el("div", { id: "top-images" }), patches = el("div", { id: "patches" });
    const bytes = decodeGrid(C.grids[r]);
    const [gh, gw] = D.meta.grid;
    C.img[r].forEach((i, t) => {
      if (i < 0) return;
      const I = D.images[String(i)];
      const short = I && I.id.length > 14 ? I.id.slice(0, 12) + "…" : (I ? I.id : `image ${i}`);
      const cap = `${short} · ${I ? I.split : ""} · max ${fmt(C.val[r][t], 3)}`;
      if (!I) { shots.append(el("div", { class: "muted", text: cap })); return; }
      const height = 256, width = Math.round((height * I.hw[1]) / I.hw[0]);
      const shot = el("div", { class: "shot", style: `width:${width}px;height:${height}px`, "data-image": i },
        el("img", { src: I.uri, width, height, alt: I.id }), heatCanvas(bytes, t * gh * gw));
      for (const [l, b] of Object.entries(I.boxes || {})) shot.append(boxesSvg(I.hw, b, BOX_COLOURS[D.labels.indexOf(l) % 3]));
      shots.append(el("div", { class: "shot-wrap", style: `display:inline-block;vertical-align:top;width:${width + 8}px` }, shot, el("div", { class: "cap", text: cap + " · " +
        Object.entries(I.labels).map(([l, v]) => `${l}=${v}`).join(", ") })));
      const [x1, y1, x2, y2] = C.win[r][t], zoom = 112 / (x2 - x1);
      const patch = el("div", { class: "patch", title: cap, style: `background-image:url(${I.uri});` +
        `background-size:${I.hw[1] * zoom}px ${I.hw[0] * zoom}px;background-position:${-x1 * zoom}px ${-y1 * zoom}px` });
      const [c1, d1, c2, d2] = C.cell[r][t];
      patch.append(boxesSvg([y2 - y1, x2 - x1], [[c1 - x1, d1 - y1, c2 - x1, d2 - y1]], "#00e5ff", "4 3"));
      patches.append(patch);
    });
    const legend = D.labels.map((l, k) => `${l} boxes: ${["green", "pink", "yellow"][k % 3]}`).join(", ");
    parts.push(el("h3", { text: `Top-activating images by max activation: the latent's activation over the image (inferno; ${legend})` }), shots,
      el("h3", { text: "Top patches: a window around each image's peak cell (dashed)" }), patches);
    box.replaceChildren(...parts);
    box.hidden = false;
    box.scrollTop = 0;
  }
  function route() {
    const m = /latent=(\d+)/.exec(location.hash);
    if (m) card(Number(m[1])); else document.getElementById("card").hidden = true;
  }

  overview();
  controls();
  drawTable();
  window.addEventListener("hashchange", route);
  route();
  document.body.setAttribute("data-ready", "1");
})();
