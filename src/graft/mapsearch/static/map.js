// graft map search page: no external scripts; everything comes from this server.
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
let current = null;

function setStatus(text) { $("status").textContent = text; }

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

function showTile(t, query) {
  document.querySelectorAll(".result, .marker").forEach((el) =>
    el.classList.toggle("selected", el.dataset.tileId === t.tile_id));
  $("tile-caption").textContent =
    `#${t.rank} ${t.tile_id}: score ${t.score.toFixed(4)}, centre ${t.lat.toFixed(5)}, ${t.lon.toFixed(5)} ` +
    `(${t.crs}, pixel offset ${t.row0}, ${t.col0})`;
  $("tile-img").src = `/tile/${encodeURIComponent(t.tile_id)}.png`;
  $("tile-img").hidden = false;
  $("tile-heat").src = `/tile/${encodeURIComponent(t.tile_id)}/heat.png?q=${encodeURIComponent(query)}`;
  $("tile-heat").hidden = false;
}

function drawMarkers(top, query) {
  const box = $("markers");
  box.innerHTML = "";
  if (!info.has_preview) return;
  const r = info.region;
  for (const t of top) {
    const m = document.createElement("div");
    m.className = "marker";
    m.dataset.tileId = t.tile_id;
    m.style.left = `${(100 * t.col0) / r.width}%`;
    m.style.top = `${(100 * t.row0) / r.height}%`;
    m.style.width = `${(100 * t.size) / r.width}%`;
    m.style.height = `${(100 * t.size) / r.height}%`;
    m.textContent = t.rank;
    m.title = `${t.tile_id} (${t.score.toFixed(4)})`;
    m.addEventListener("click", () => showTile(t, query));
    box.appendChild(m);
  }
}

function drawDots(scores, range) {
  // Dataset regions: one dot per tile at its centre, coloured by its score.
  const svg = $("dots");
  const [x0, y0, x1, y1] = info.region.bbox_lonlat;
  const w = svg.clientWidth, h = svg.clientHeight;
  const span = Math.max(range[1] - range[0], 1e-6);
  svg.innerHTML = "";
  info.tiles.forEach((t, i) => {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", 8 + ((t.lon - x0) / Math.max(x1 - x0, 1e-9)) * (w - 16));
    c.setAttribute("cy", 8 + ((y1 - t.lat) / Math.max(y1 - y0, 1e-9)) * (h - 16));
    c.setAttribute("r", 4);
    const v = scores ? (scores[i] - range[0]) / span : 0.5;
    c.setAttribute("fill", `rgb(${Math.round(255 * v)},${Math.round(80 * v)},${Math.round(255 * (1 - v))})`);
    svg.appendChild(c);
  });
}

async function search(query) {
  query = query.trim();
  if (!query) return;
  setStatus(`searching "${query}"…`);
  const res = await getJSON(`/api/search?q=${encodeURIComponent(query)}&k=${info.top_k}`);
  current = res;
  if (info.has_preview) {
    $("heat").src = `/heat.png?q=${encodeURIComponent(query)}`;
    $("heat").hidden = false;
  } else {
    drawDots(res.tile_scores, res.score_range);
  }
  const list = $("results");
  list.innerHTML = "";
  for (const t of res.top) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.tileId = t.tile_id;
    li.dataset.rank = t.rank;
    li.dataset.row0 = t.row0;
    li.dataset.col0 = t.col0;
    li.dataset.size = t.size;
    li.textContent = `${t.tile_id}  ${t.score.toFixed(4)}  (${t.lat.toFixed(5)}, ${t.lon.toFixed(5)})`;
    li.addEventListener("click", () => showTile(t, query));
    list.appendChild(li);
  }
  drawMarkers(res.top, query);
  if (res.top.length) showTile(res.top[0], query);
  setStatus(`"${res.prompt}": ${res.top.length} tiles`);
  document.body.dataset.lastQuery = query;
}

async function init() {
  info = await getJSON("/api/info");
  const r = info.region;
  $("region-info").textContent =
    `${r.name}: ${r.n_tiles} tiles of ${r.tile_px} px, ${info.grid}x${info.grid} patches each` +
    (r.crs ? `, ${r.crs}` : "") + ` — prompt "${info.template}", tiles ranked by ${info.rank}-level similarity`;
  if (info.has_preview) {
    $("preview").src = "/preview.png";
    // The heat map covers whole tiles; the last row and column of tiles may reach past the raster's edge.
    $("heat").style.width = `${(100 * r.n_cols * r.tile_px) / r.width}%`;
    $("heat").style.height = `${(100 * r.n_rows * r.tile_px) / r.height}%`;
  } else {
    $("preview").hidden = true;
    $("dots-box").hidden = false;
    drawDots(null, [0, 1]);
  }
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("query").value).catch((err) => setStatus(`error: ${err.message}`));
  });
  setStatus("ready");
  document.body.dataset.ready = "1";
}

init().catch((err) => setStatus(`error: ${err.message}`));
