"use strict";
// The review page: a 3x3 grid over a snapshot of one filter's ids (taken when the filter is
// chosen, so that pages do not shift while labels change); the keyboard does the work and
// every decision is saved by the server before the tile changes. In "duplicate groups" each
// group starts a row of its own; the empty slots after it are null ids.

const PAGE = 9;
const COLUMNS = 3;
const FILTERS = {
  all: { key: "a", name: "all" },
  unlabelled: { key: "l", name: "unlabelled" },
  overridden: { key: "o", name: "overridden / excluded" },
  disagree: { key: "d", name: "most disagreeing" },
  suspects: { key: "s", name: "suspects" },
  quality: { key: "q", name: "quality outliers" },
  duplicates: { key: "k", name: "duplicate groups" },
};
// A prefix key's mode: the next digit excludes (x) or accepts the suggested label (y).
const MODES = {
  exclude: { key: "x", action: "exclude", text: "exclude: press 1–9 (Esc cancels)" },
  accept: { key: "y", action: "accept", text: "accept the suggestion: press 1–9 (Esc cancels)" },
};
const view = { classes: [], filters: [], filter: "all", ids: [], page: 0, tiles: new Map(), mode: null };
const thumbs = new Map(); // id -> Promise<{url, error}>, oldest first, bounded by MAX_THUMBS
const MAX_THUMBS = 200;
let queue = Promise.resolve();

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// Decisions, paging and filter changes run one after the other, in the order of the keys.
function enqueue(task) {
  queue = queue.then(task).catch((e) => toast(e.message, true));
  return queue;
}

function toast(message, isError = false) {
  const node = $("toast");
  node.textContent = message;
  node.className = isError ? "show error" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.className = ""; }, isError ? 6000 : 2500);
}

// --- Thumbnails: fetched as blobs so that a placeholder's reason (X-Thumb-Error) can be shown.

function thumb(id) {
  let entry = thumbs.get(id);
  if (entry) {
    thumbs.delete(id); // Move to the end: most recently used.
  } else {
    entry = fetch("/thumb/" + encodeURIComponent(id))
      .then(async (r) => r.ok
        ? { url: URL.createObjectURL(await r.blob()), error: r.headers.get("X-Thumb-Error") || "" }
        : { url: null, error: `no thumbnail (${r.status})` })
      .catch((e) => ({ url: null, error: `no thumbnail (${e.message})` }));
  }
  thumbs.set(id, entry);
  while (thumbs.size > MAX_THUMBS) {
    const [oldId, old] = thumbs.entries().next().value;
    thumbs.delete(oldId);
    old.then((t) => t.url && URL.revokeObjectURL(t.url));
  }
  return entry;
}

function prefetch(page) {
  view.ids.slice(page * PAGE, (page + 1) * PAGE).filter(Boolean).forEach(thumb);
}

// Duplicate groups: a group starts a row, and the next page when it would not fit on this one
// (a group of up to nine is never split); null fills the empty slots.
function groupSlots(groups) {
  const slots = [];
  for (const group of groups) {
    const rows = Math.ceil(group.members.length / COLUMNS);
    const rowsLeft = (PAGE - (slots.length % PAGE)) / COLUMNS;
    if (rows > rowsLeft && rows <= PAGE / COLUMNS) while (slots.length % PAGE) slots.push(null);
    slots.push(...group.members);
    while (slots.length % COLUMNS) slots.push(null);
  }
  return slots;
}

// --- Rendering

const pageSlots = () => view.ids.slice(view.page * PAGE, (view.page + 1) * PAGE);
const pageIds = () => pageSlots().filter(Boolean);
const imageCount = () => view.ids.filter(Boolean).length;
const pageCount = () => Math.max(1, Math.ceil(view.ids.length / PAGE));
const className = (label) => (label === null ? "unlabelled" : view.classes[label]);
const tileOf = (id) => [...document.querySelectorAll(".tile")].find((t) => t.dataset.id === id);

function setProgress(p) {
  $("fill").style.width = `${p.total ? (100 * p.reviewed) / p.total : 0}%`;
  $("progress-text").textContent =
    `${p.reviewed} / ${p.total} reviewed · ${p.overridden} overridden · ${p.excluded} excluded`;
}

function renderFilters() {
  const nav = $("filters");
  nav.replaceChildren();
  for (const name of view.filters) {
    const button = el("button");
    button.type = "button";
    button.dataset.filter = name;
    button.append(el("kbd", "", FILTERS[name].key), FILTERS[name].name);
    button.classList.toggle("active", name === view.filter);
    button.addEventListener("click", () => enqueue(() => setFilter(name)));
    nav.append(button);
  }
}

function renderPager() {
  const before = view.ids.slice(0, view.page * PAGE).filter(Boolean).length;
  const first = before + 1;
  const last = before + pageIds().length;
  $("page-info").textContent = imageCount()
    ? `page ${view.page + 1} / ${pageCount()} · images ${first}–${last} of ${imageCount()}`
    : "no images";
  history.replaceState(null, "", `#filter=${view.filter}&page=${view.page + 1}`);
}

function makeTile(id, key) {
  const tile = el("div", "tile");
  tile.dataset.id = id;
  tile.dataset.key = key;
  const box = el("div", "thumb");
  box.append(el("span", "loading", "loading…"));
  tile.append(el("span", "key", String(key)), el("span", "check"), box,
    el("div", "caption"), el("div", "finding"), el("div", "meta"), el("div", "note"));
  tile.addEventListener("click", (e) => {
    const accept = e.target.closest("button.accept");
    enqueue(() => decide(key, accept ? "accept" : e.shiftKey ? "exclude" : "flip"));
  });
  thumb(id).then((t) => {
    if (t.url) {
      const img = new Image();
      img.alt = id;
      img.src = t.url;
      box.replaceChildren(img);
    } else {
      box.replaceChildren(el("span", "loading", "no image"));
    }
    tile.dataset.thumbError = t.error;
    updateTile(tile);
  });
  updateTile(tile);
  return tile;
}

function updateTile(tile) {
  const t = view.tiles.get(tile.dataset.id);
  if (!t) return;
  tile.classList.toggle("overridden", t.overridden);
  tile.classList.toggle("excluded", t.excluded);
  tile.classList.toggle("reviewed", t.reviewed);
  tile.querySelector(".check").textContent = t.reviewed ? "✓" : "";
  tile.querySelector(".check").title = "reviewed";
  const caption = tile.querySelector(".caption");
  caption.replaceChildren(el("span", `label c${t.label === null ? "none" : t.label}`, className(t.label)));
  if (t.overridden) caption.append(el("span", "was", `was ${className(t.original)}`));
  renderFinding(tile.querySelector(".finding"), t);
  tile.classList.toggle("kept", Boolean(t.duplicate && t.duplicate.kept === t.id));
  const meta = tile.querySelector(".meta");
  const idSpan = el("span", "id", t.id);
  idSpan.title = t.id;
  meta.replaceChildren(idSpan);
  if (t.probability !== null) meta.append(el("span", "prob", `p=${t.probability.toFixed(2)}`));
  tile.querySelector(".note").textContent = tile.dataset.thumbError || t.note || "";
}

// What --label_issues and --quality_dir say of the image: the suggestion, the audit's reasons, its group.
function renderFinding(node, t) {
  node.replaceChildren();
  const s = t.suspect;
  if (s) {
    const line = el("div", "suggest");
    const past = s.issue ? "" : " (past the estimated count: contradicted less surely)";
    line.title = `label issue #${s.rank}${past}: score P(given) − max P(other) = ${s.score.toFixed(3)}`;
    line.append(el("span", "given", className(s.given)), "→",
      el("span", `label c${s.suggested}`, className(s.suggested)), el("span", "score", s.score.toFixed(2)));
    if (t.label === s.suggested) {
      line.append(el("span", "accepted", "✓"));
    } else {
      const button = el("button", "accept", "y accept");
      button.type = "button";
      button.title = "accept the suggested label (y then the tile's digit)";
      line.append(button);
    }
    node.append(line);
  }
  if (t.flags.length) {
    const flags = el("div", "flags");
    t.flags.forEach((f) => flags.append(el("span", "flag", f)));
    node.append(flags);
  }
  const d = t.duplicate;
  if (d) {
    const kept = d.kept === t.id;
    const line = el("div", "dup", `group ${d.group + 1} · ${d.kind} · ${d.split}`);
    if (d.leakage) line.append(el("span", "leak", "leakage"));
    line.append(el("span", kept ? "keep" : "copy", kept ? "kept" : "copy"));
    node.append(line);
  }
}

function flash(tile) {
  tile.classList.add("flash");
  setTimeout(() => tile.classList.remove("flash"), 250);
}

function applyItem(item) {
  view.tiles.set(item.id, item);
  const tile = tileOf(item.id);
  if (tile) {
    updateTile(tile);
    flash(tile);
  }
}

async function showPage(page) {
  view.page = Math.min(Math.max(0, page), pageCount() - 1);
  const ids = pageIds();
  const query = ids.map((id) => "id=" + encodeURIComponent(id)).join("&");
  const data = ids.length ? await api("/api/items?" + query) : { items: [] };
  view.tiles = new Map(data.items.map((t) => [t.id, t]));
  const grid = $("grid");
  grid.replaceChildren(...pageSlots().map((id, n) => (id ? makeTile(id, n + 1) : el("div", "slot"))));
  if (!ids.length) grid.append(el("div", "empty", `No images in “${FILTERS[view.filter].name}”.`));
  renderPager();
  prefetch(view.page + 1);
}

// --- Actions

async function setFilter(name, page) {
  if (!view.filters.includes(name)) {
    const needs = { disagree: "--predictions (and two classes)", suspects: "--label_issues" }[name] || "--quality_dir";
    toast(`“${FILTERS[name].name}” needs ${needs}`, true);
    return;
  }
  const data = await api("/api/ids?filter=" + name);
  view.filter = name;
  view.ids = data.groups ? groupSlots(data.groups) : data.ids;
  renderFilters();
  const firstUnreviewed = view.ids.indexOf(data.ids[data.first_unreviewed]);
  await showPage(page ?? Math.floor(Math.max(0, firstUnreviewed) / PAGE));
}

async function decide(key, action) {
  const id = pageSlots()[key - 1];
  if (!id) return;
  const data = await api("/api/decide", { id, action });
  applyItem(data.item);
  setProgress(data.progress);
}

async function undo() {
  const data = await api("/api/undo", {});
  setProgress(data.progress);
  const d = data.decision;
  if (!d) {
    toast("Nothing to undo");
    return;
  }
  const position = view.ids.indexOf(d.id);
  if (data.item && !tileOf(d.id) && position >= 0) await showPage(Math.floor(position / PAGE));
  if (data.item) applyItem(data.item);
  const what = d.field === "label" ? "label change" : d.after ? "re-inclusion" : "exclusion";
  toast(`Undid the ${what} of ${d.id}`);
}

async function next() {
  const ids = pageIds();
  if (ids.length) setProgress((await api("/api/reviewed", { ids })).progress);
  for (const id of ids) {
    const t = view.tiles.get(id);
    if (t) t.reviewed = true;
  }
  if (view.page + 1 < pageCount()) {
    await showPage(view.page + 1);
  } else {
    document.querySelectorAll(".tile").forEach(updateTile);
    toast(`End of “${FILTERS[view.filter].name}” (${imageCount()} images)`);
  }
}

async function prev() {
  if (view.page > 0) await showPage(view.page - 1);
}

function setMode(mode) {
  view.mode = mode;
  $("mode").textContent = mode ? MODES[mode].text : "";
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const digit = /^(?:Digit|Numpad)([1-9])$/.exec(e.code);
  if (digit) {
    e.preventDefault();
    if (e.repeat) return; // A held key must not flip a label back and forth.
    const action = e.shiftKey ? "exclude" : view.mode ? MODES[view.mode].action : "flip";
    setMode(null);
    enqueue(() => decide(Number(digit[1]), action));
    return;
  }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const actions = { ArrowRight: next, n: next, PageDown: next, ArrowLeft: prev, p: prev, PageUp: prev, u: undo };
  const filter = Object.keys(FILTERS).find((name) => FILTERS[name].key === key);
  const mode = Object.keys(MODES).find((name) => MODES[name].key === key);
  if (mode) setMode(view.mode === mode ? null : mode);
  else if (key === "Escape") setMode(null);
  else if (actions[key]) enqueue(actions[key]);
  else if (filter) enqueue(() => setFilter(filter));
  else return;
  e.preventDefault();
}

async function init() {
  const state = await api("/api/state");
  view.classes = state.classes;
  view.filters = state.filters;
  $("source").textContent = `${state.title} · classes: ${state.classes.join(", ")}`;
  setProgress(state.progress);
  const hash = new URLSearchParams(location.hash.slice(1));
  const filter = view.filters.includes(hash.get("filter")) ? hash.get("filter") : "all";
  const page = hash.has("page") ? Math.max(0, (parseInt(hash.get("page"), 10) || 1) - 1) : undefined;
  await setFilter(filter, page);
  $("prev").addEventListener("click", () => enqueue(prev));
  $("next").addEventListener("click", () => enqueue(next));
  document.addEventListener("keydown", onKey);
  document.body.dataset.ready = "true";
}

enqueue(init);
