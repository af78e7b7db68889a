// Slide page viewer: one OpenSeadragon viewer per pane, pan and zoom linked, an overlay tiled image
// per pane, a scale bar from microns per pixel, a colour legend, and a click that reports the grid
// tile under the pointer to Streamlit (custom component protocol, apiVersion 1, no npm client).
"use strict";

const PREFIX = "node_modules/openseadragon/build/openseadragon/images/";
const state = { key: null, viewers: [], overlays: [], args: null, syncing: false, clicks: 0 };
// For tests: per pane, Deep Zoom levels of the tiles loaded (slide image only).
window.__viewerStats = { loaded: [] };
window.__viewers = state.viewers;

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}

function tileSource(base, slide, kind, ext) {
  return {
    width: slide.width, height: slide.height, tileSize: slide.tile_size, tileOverlap: slide.overlap,
    minLevel: 0, maxLevel: slide.max_level,
    getTileUrl: function (level, x, y) { return `${base}/${slide.id}/${kind}/${level}/${x}_${y}.${ext}`; },
  };
}

function niceLength(um) {
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  for (const m of [5, 2, 1]) { if (m * p <= um) return m * p; }
  return p;
}

function updateScalebar(viewer, el, mpp) {
  if (!mpp) { el.style.display = "none"; return; }
  const item = viewer.world.getItemAt(0);
  if (!item) return;
  const zoom = item.viewportToImageZoom(viewer.viewport.getZoom(true)); // screen px per image px
  const umPerPx = mpp / zoom;
  const um = niceLength(umPerPx * 120);
  const px = um / umPerPx;
  const label = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
  el.innerHTML = `${label}<div class="bar" style="width:${px.toFixed(0)}px"></div>`;
  el.style.display = "block";
}

function link(src, others) {
  src.addHandler("viewport-change", function () {
    if (state.syncing) return;
    state.syncing = true;
    for (const dst of others) {
      dst.viewport.zoomTo(src.viewport.getZoom(), null, true);
      dst.viewport.panTo(src.viewport.getCenter(), true);
    }
    state.syncing = false;
  });
}

function build(args) {
  const row = document.getElementById("row");
  for (const v of state.viewers) v.destroy();
  state.viewers.length = 0;
  state.overlays = [];
  row.innerHTML = "";
  window.__viewerStats.loaded = [];
  args.panes.forEach(function (pane, i) {
    const div = document.createElement("div");
    div.className = "pane";
    div.innerHTML = `<div class="title" id="title-${i}"></div>` +
      `<div class="osd" id="osd-${i}" style="height:${args.height}px"></div>`;
    row.appendChild(div);
    const viewer = OpenSeadragon({
      id: `osd-${i}`, prefixUrl: PREFIX, drawer: "canvas", showNavigator: i === 0, navigatorPosition: "TOP_RIGHT",
      tileSources: tileSource(args.base, args.slide, "tiles", "jpeg"), crossOriginPolicy: false,
      maxZoomPixelRatio: 4, visibilityRatio: 0.5, gestureSettingsMouse: { clickToZoom: false },
      immediateRender: false, showRotationControl: false, animationTime: 0.6,
    });
    const loaded = {};
    window.__viewerStats.loaded.push(loaded);
    viewer.addHandler("tile-loaded", function (e) {
      if (e.tiledImage === viewer.world.getItemAt(0)) loaded[e.tile.level] = (loaded[e.tile.level] || 0) + 1;
    });
    const bar = document.createElement("div");
    bar.className = "scalebar";
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.id = `legend-${i}`;
    document.getElementById(`osd-${i}`).appendChild(bar);
    document.getElementById(`osd-${i}`).appendChild(legend);
    viewer.addHandler("animation", function () { updateScalebar(viewer, bar, args.slide.mpp); });
    viewer.addHandler("open", function () { updateScalebar(viewer, bar, args.slide.mpp); applyOverlay(i); });
    viewer.addHandler("canvas-click", function (e) {
      if (!e.quick) return;
      const item = viewer.world.getItemAt(0);
      if (!item) return;
      const p = item.viewportToImageCoordinates(viewer.viewport.pointFromPixel(e.position));
      const g = state.args.grid;
      if (!g) return;
      const col = Math.floor(p.x / g.stride), rowi = Math.floor(p.y / g.stride);
      if (p.x < 0 || p.y < 0 || col >= g.cols || rowi >= g.rows) return;
      state.clicks += 1;
      send("streamlit:setComponentValue", { value: { row: rowi, col: col, x: p.x, y: p.y, n: state.clicks },
                                            dataType: "json" });
    });
    state.viewers.push(viewer);
    state.overlays.push({ oid: null, item: null });
  });
  state.viewers.forEach(function (v, i) { link(v, state.viewers.filter(function (_, j) { return j !== i; })); });
}

function applyOverlay(i) {
  const args = state.args, viewer = state.viewers[i], pane = args.panes[i], cur = state.overlays[i];
  if (!viewer || !viewer.world.getItemAt(0)) return;
  const want = pane.overlay || null;
  if (cur.oid !== want) {
    if (cur.item) viewer.world.removeItem(cur.item);
    cur.item = null;
    cur.oid = want;
    if (want) {
      viewer.addTiledImage({
        tileSource: tileSource(args.base, args.slide, `overlay/${want}`, "webp"), index: 1, opacity: args.opacity,
        success: function (ev) { if (cur.oid === want) cur.item = ev.item; else viewer.world.removeItem(ev.item); },
      });
    }
  }
  if (cur.item) cur.item.setOpacity(args.opacity);
  // selected grid tile
  viewer.clearOverlays();
  const g = args.grid, sel = args.selected;
  if (g && sel) {
    const item = viewer.world.getItemAt(0);
    const r = item.imageToViewportRectangle(sel[1] * g.stride, sel[0] * g.stride, g.tile, g.tile);
    const el = document.createElement("div");
    el.className = "sel";
    viewer.addOverlay({ element: el, location: r });
  }
  const title = document.getElementById(`title-${i}`);
  if (title) title.textContent = pane.title;
  const legend = document.getElementById(`legend-${i}`);
  if (legend) {
    if (args.legend && want) {
      const stops = args.legend.ramp.map(function (c, k) {
        return `${c} ${(100 * k / (args.legend.ramp.length - 1)).toFixed(0)}%`; }).join(",");
      legend.innerHTML = `<div>${args.legend.label}</div><div class="ramp" style="background:linear-gradient(to right,${stops})"></div>` +
        `<div style="display:flex;justify-content:space-between"><span>${args.legend.vmin}</span><span>${args.legend.vmax}</span></div>`;
      legend.style.display = "block";
    } else {
      legend.style.display = "none";
    }
  }
}

function render(args) {
  state.args = args;
  const key = `${args.slide.id}|${args.panes.length}|${args.height}`;
  if (key !== state.key) {
    state.key = key;
    build(args);
  } else {
    args.panes.forEach(function (_, i) { applyOverlay(i); });
  }
  send("streamlit:setFrameHeight", { height: args.height + 40 });
}

window.addEventListener("message", function (ev) {
  const d = ev.data;
  if (!d || d.type !== "streamlit:render") return;
  try { render(d.args); document.getElementById("msg").textContent = ""; }
  catch (err) { document.getElementById("msg").textContent = `viewer error: ${err}`; }
});
send("streamlit:componentReady", { apiVersion: 1 });
