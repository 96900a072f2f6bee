// The saganet slide viewer: a slide as a deep-zoom pyramid (OpenSeadragon), the model's layers as
// images aligned with the tile grid, the tile under a click, a scale bar. Every /v1 request (tiles
// included) carries the server's token when it has one; the page asks for it once per tab.
const $ = (id) => document.getElementById(id);
const LAYERS = ["prob", "class", "valid"]; // drawing order, bottom to top, above the slide

const state = {
  token: sessionStorage.getItem("saganet-token"),
  tokenAsked: null, // the pending question, shared by every request that got 401
  viewer: null,
  slides: [],
  writable: false,
  current: null, // id of the slide shown
  layout: null, // its /layout answer
  layers: {}, // kind -> OpenSeadragon TiledImage
  blobs: new Map(), // layer URL -> object URL of the fetched PNG
  tileBox: null,
  polling: null,
};
window.saganet = state; // for the browser tests and the curious

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

function askToken(refused) {
  if (!state.tokenAsked) {
    state.tokenAsked = new Promise((resolve) => {
      const dialog = $("token-dialog");
      dialog.querySelector("p").textContent = refused
        ? "That token was refused. Enter the server's access token."
        : "This server needs its access token.";
      $("token-form").onsubmit = () => {
        state.token = $("token-input").value.trim();
        sessionStorage.setItem("saganet-token", state.token);
        if (state.viewer) state.viewer.setAjaxHeaders(authHeaders(), true);
        state.tokenAsked = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return state.tokenAsked;
}

// fetch() with the token; asks for it (again) on 401 and retries.
async function api(path, options = {}) {
  for (;;) {
    const r = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (r.status !== 401) return r;
    await askToken(Boolean(state.token));
  }
}

async function apiJSON(path, options) {
  const r = await api(path, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${path}: HTTP ${r.status}`);
  return body;
}

function say(message) {
  $("status").textContent = message || "";
}

// ---- the slide list ---------------------------------------------------------------------------

async function refreshSlides() {
  clearTimeout(state.polling);
  const data = await apiJSON("/v1/slides");
  state.slides = data.slides;
  state.writable = data.writable;
  const list = $("slide-list");
  list.replaceChildren(...data.slides.map(slideItem));
  if (!data.slides.length) list.innerHTML = "<li class='state'>none yet</li>";
  const shown = data.slides.find((s) => s.id === state.current);
  if (shown && state.layout && shown.state !== state.layout.state) await openSlide(shown.id, true);
  if (data.slides.some((s) => ["queued", "running", "cancelling"].includes(s.state))) {
    state.polling = setTimeout(() => refreshSlides().catch((e) => say(e.message)), 1000);
  }
}

function slideItem(s) {
  const li = document.createElement("li");
  li.dataset.id = s.id;
  li.className = s.id === state.current ? "current" : "";
  li.append(s.name, document.createElement("br"));
  const st = document.createElement("span");
  st.className = "state";
  st.textContent = s.state === "failed" ? `failed: ${s.error}` : s.state;
  li.append(st);
  if (s.state === "running" || s.state === "queued") {
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = s.progress;
    li.append(bar);
    if (state.writable) {
      const stop = document.createElement("button");
      stop.textContent = "cancel";
      stop.className = "cancel";
      stop.onclick = (e) => {
        e.stopPropagation();
        apiJSON(`/v1/slides/${s.id}`, { method: "DELETE" }).then(refreshSlides).catch((err) => say(err.message));
      };
      li.append(stop);
    }
  }
  li.onclick = () => openSlide(s.id).catch((e) => say(e.message));
  return li;
}

async function refreshRoot() {
  $("submit").hidden = !state.writable;
  if (!state.writable) return;
  const data = await apiJSON("/v1/slide-root");
  $("root-list").replaceChildren(
    ...data.slides.map((path) => {
      const li = document.createElement("li");
      li.textContent = path;
      li.title = "predict this slide";
      li.onclick = () => submit({ body: JSON.stringify({ path }), headers: { "Content-Type": "application/json" } });
      return li;
    }),
  );
  if (!data.slides.length) $("root-list").innerHTML = "<li class='state'>none (or no --slide-root)</li>";
}

async function submit(options) {
  try {
    say("submitting…");
    const job = await apiJSON("/v1/slides", { method: "POST", ...options });
    say("");
    state.current = job.id;
    await refreshSlides();
    await openSlide(job.id);
  } catch (e) {
    say(e.message);
  }
}

// ---- the slide and its layers -----------------------------------------------------------------

function makeViewer() {
  state.viewer = window.OpenSeadragon({
    element: $("view"),
    prefixUrl: "/vendor/openseadragon/images/",
    // Our own buttons: OpenSeadragon's are 16 images, fetched ahead of the slide's first tiles.
    zoomInButton: "zoom-in",
    zoomOutButton: "zoom-out",
    homeButton: "home",
    fullPageButton: "full-page",
    drawer: "canvas", // a 2-D canvas: pixels the tests can read
    loadTilesWithAjax: true, // so tile requests carry the token
    ajaxHeaders: authHeaders(),
    showNavigator: true,
    navigatorPosition: "TOP_RIGHT",
    gestureSettingsMouse: { clickToZoom: false }, // a click inspects the tile under it
    maxZoomPixelRatio: 4,
    imageSmoothingEnabled: true,
  });
  state.viewer.addHandler("animation", updateScaleBar);
  state.viewer.addHandler("resize", updateScaleBar);
  state.viewer.addHandler("canvas-click", (e) => {
    if (e.quick) inspect(e.position).catch((err) => say(err.message));
  });
}

function opened(viewer) {
  return new Promise((resolve, reject) => {
    const ok = () => { viewer.removeHandler("open-failed", bad); resolve(); };
    const bad = (e) => { viewer.removeHandler("open", ok); reject(new Error(`cannot open the slide: ${e.message}`)); };
    viewer.addOnceHandler("open", ok);
    viewer.addOnceHandler("open-failed", bad);
  });
}

async function openSlide(id, keepView = false) {
  const sameSlide = state.layout && state.layout.id === id;
  state.current = id;
  history.replaceState(null, "", `?slide=${id}`);
  for (const li of $("slide-list").children) li.className = li.dataset.id === id ? "current" : "";
  $("empty").hidden = true;
  let wait = null;
  if (!sameSlide || !keepView) { // the pyramid and the slide's details are asked for together
    wait = opened(state.viewer);
    state.viewer.open({ tileSource: `/v1/slides/${id}/dzi` });
  }
  const layout = await apiJSON(`/v1/slides/${id}/layout`);
  state.layout = layout;
  if (wait) {
    await wait;
    state.layers = {};
    state.tileBox = null;
  }
  showPanel(layout);
  if (layout.state === "done") await addLayers(layout);
  updateScaleBar();
}

async function layerURL(url) {
  if (!state.blobs.has(url)) {
    const r = await api(url);
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    state.blobs.set(url, URL.createObjectURL(await r.blob()));
  }
  return state.blobs.get(url);
}

function layerOpacity(kind) {
  return $(`${kind}-on`).checked ? $(`${kind}-opacity`).value / 100 : 0;
}

function layerSource(kind) {
  const l = state.layout.layers;
  return kind === "prob" ? l.prob[$("prob-class").value] : l[kind];
}

// Adds (or replaces) one layer at its place in the drawing order, sized to the tile grid.
async function setLayer(kind) {
  const l = state.layout;
  const url = await layerURL(layerSource(kind));
  const [w] = l.dimensions;
  const old = state.layers[kind];
  const below = LAYERS.slice(0, LAYERS.indexOf(kind)).filter((k) => state.layers[k] && k !== kind).length;
  const item = await new Promise((resolve, reject) => {
    state.viewer.addTiledImage({
      tileSource: { type: "image", url },
      x: 0,
      y: 0,
      width: (l.grid.cols * l.grid.size0) / w,
      opacity: layerOpacity(kind),
      index: 1 + below,
      success: (e) => resolve(e.item),
      error: (e) => reject(new Error(`layer ${kind}: ${e.message}`)),
    });
  });
  if (old) state.viewer.world.removeItem(old);
  state.layers[kind] = item;
}

async function addLayers(l) {
  const select = $("prob-class");
  const chosen = select.value;
  select.replaceChildren(...l.classes.map((c) => new Option(c, c)));
  select.value = l.classes.includes(chosen) ? chosen : l.call.class || l.classes[0];
  $("prob-legend").style.background = gradient(l.colormaps.magma);
  $("valid-legend").style.background = gradient(l.colormaps.viridis);
  $("class-legend").replaceChildren(
    ...l.classes.map((c, i) => {
      const li = document.createElement("li");
      const swatch = document.createElement("i");
      swatch.style.background = l.colours[i];
      li.append(swatch, c);
      return li;
    }),
  );
  for (const kind of LAYERS) if (!state.layers[kind]) await setLayer(kind);
  $("layers").hidden = false;
}

function gradient(stops) {
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

for (const kind of LAYERS) {
  const update = () => state.layers[kind] && state.layers[kind].setOpacity(layerOpacity(kind));
  $(`${kind}-on`).addEventListener("change", update);
  $(`${kind}-opacity`).addEventListener("input", update);
}
$("prob-class").addEventListener("change", () => setLayer("prob").catch((e) => say(e.message)));

// ---- side panel, tile under a click, scale bar ------------------------------------------------

function showPanel(l) {
  $("panel").hidden = false;
  $("slide-name").textContent = l.name;
  const rows = [
    ["state", l.state === "failed" ? `failed: ${l.error}` : l.state],
    ["size", `${l.dimensions[0]} × ${l.dimensions[1]} px`],
    ["MPP", l.mpp ? `${l.mpp} µm/px` : "not recorded"],
  ];
  if (l.state === "done") {
    rows.push(["model", l.model]);
    rows.push(["call", l.call.class ? `${l.call.class} (from ${l.call.tiles_used} of ${l.tiles} tiles)` : `none: ${l.call.reason || ""}`]);
  }
  $("slide-info").replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      dd.id = `info-${k}`;
      return [dt, dd];
    }),
  );
  $("layers").hidden = l.state !== "done";
  $("tile").hidden = true;
  $("downloads").hidden = l.state !== "done";
  if (l.state === "done") {
    $("download-list").replaceChildren(
      ...Object.entries(l.downloads).map(([name, url]) => {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = url;
        a.textContent = name;
        a.onclick = (e) => { e.preventDefault(); download(url).catch((err) => say(err.message)); };
        li.append(a);
        return li;
      }),
    );
  }
}

// A download through fetch(), so it carries the token like every other request.
async function download(url) {
  const r = await api(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  const name = /filename="?([^";]+)"?/.exec(r.headers.get("content-disposition") || "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = name ? name[1] : url.split("/").pop();
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function inspect(position) {
  const l = state.layout;
  if (!l || l.state !== "done") return;
  const slide = state.viewer.world.getItemAt(0);
  const p = slide.viewerElementToImageCoordinates(position);
  if (p.x < 0 || p.y < 0 || p.x >= l.dimensions[0] || p.y >= l.dimensions[1]) return;
  const { tile } = await apiJSON(`/v1/slides/${l.id}/tile-at?x=${p.x.toFixed(1)}&y=${p.y.toFixed(1)}`);
  $("tile").hidden = false;
  if (state.tileBox) state.viewer.removeOverlay(state.tileBox);
  state.tileBox = null;
  if (!tile) {
    $("tile-where").textContent = `(${Math.round(p.x)}, ${Math.round(p.y)}): no tile here (not tissue)`;
    $("tile-class").textContent = "–";
    $("tile-valid").textContent = "–";
    $("tile-probs").replaceChildren();
    return;
  }
  $("tile-where").textContent = `tile at (${tile.x}, ${tile.y}), ${tile.size} px`;
  $("tile-class").textContent = tile.predicted;
  $("tile-valid").textContent = tile.valid_fraction.toFixed(4);
  $("tile-probs").replaceChildren(
    ...Object.entries(tile.probs)
      .sort((a, b) => b[1] - a[1])
      .map(([c, v]) => {
        const tr = document.createElement("tr");
        tr.className = c === tile.predicted ? "top" : "";
        tr.dataset.cls = c;
        tr.innerHTML = "<td></td><td></td>";
        tr.children[0].textContent = c;
        tr.children[1].textContent = v.toFixed(6);
        return tr;
      }),
  );
  state.tileBox = document.createElement("div");
  state.tileBox.className = "tile-box";
  state.viewer.addOverlay({ element: state.tileBox, location: slide.imageToViewportRectangle(tile.x, tile.y, tile.size, tile.size) });
}

function updateScaleBar() {
  const l = state.layout;
  const slide = state.viewer && state.viewer.world.getItemAt(0);
  if (!l || !l.mpp || !slide) {
    $("scale-bar").hidden = true;
    return;
  }
  const screenPerImage = slide.viewportToImageZoom(state.viewer.viewport.getZoom(true));
  const micronsPerScreenPx = l.mpp / screenPerImage;
  const target = 120 * micronsPerScreenPx; // about 120 px long
  const pow = 10 ** Math.floor(Math.log10(target));
  const microns = [5, 2, 1].map((m) => m * pow).find((v) => v <= target) || pow;
  $("scale-line").style.width = `${Math.round(microns / micronsPerScreenPx)}px`;
  $("scale-text").textContent = microns >= 1000 ? `${microns / 1000} mm` : `${microns} µm`;
  $("scale-bar").hidden = false;
}

// ---- start ------------------------------------------------------------------------------------

$("upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  if (!form.get("mpp")) form.delete("mpp");
  submit({ body: form });
});

async function start() {
  if (!window.OpenSeadragon) {
    say("OpenSeadragon is missing: run `npm ci` in the saganet repository, then reload.");
    return;
  }
  makeViewer();
  const wanted = new URLSearchParams(location.search).get("slide");
  // A slide named in the address opens while the lists load, not after them.
  await Promise.all([refreshSlides().then(refreshRoot), wanted ? openSlide(wanted) : null]);
}

start().catch((e) => say(e.message));
