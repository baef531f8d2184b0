"""The demo's single HTML page (no external assets: it works offline). Results are written with ``textContent`` only.

Hooks the end-to-end test relies on: ``#file`` (the upload input; choosing a file submits it), ``#error`` (the
message of a rejected upload), ``#hits .hit`` (``.hit-path``, ``.hit-score``, ``img.thumb``), ``#label-table
.label-row`` (``.label-name``, ``.label-score``), and ``body[data-state]`` = ``idle | busy | done | error`` with
``body[data-queries]`` counting finished queries.
"""
from __future__ import annotations

import html

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #info { color: #666; font-size: .85rem; margin-bottom: 1rem; }
  form { display: flex; flex-wrap: wrap; gap: .8rem; align-items: end; padding: 1rem; background: #f4f6fa;
         border-radius: .5rem; }
  label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
  #labels { min-width: 22rem; }
  #k { width: 4rem; }
  #error { display: none; margin: 1rem 0; padding: .8rem; border-radius: .4rem; background: #fde8e8;
           color: #8a1c1c; border: 1px solid #f5b5b5; white-space: pre-wrap; }
  #status { margin: .8rem 0; color: #555; min-height: 1.2rem; }
  #results { display: none; gap: 2rem; flex-wrap: wrap; }
  #query-box img { width: 160px; height: 160px; object-fit: contain; border: 1px solid #ddd; background: #fff; }
  table { border-collapse: collapse; }
  td, th { padding: .2rem .6rem; text-align: left; font-size: .9rem; }
  .bar { background: #3b6fc2; height: .6rem; border-radius: .3rem; }
  #hits { display: flex; flex-wrap: wrap; gap: .8rem; }
  .hit { width: 112px; font-size: .75rem; text-align: center; word-break: break-all; }
  .hit img { width: 96px; height: 96px; border: 1px solid #ddd; image-rendering: pixelated; background: #fff; }
  .hit-score { color: #3b6fc2; font-weight: 600; }
</style>
</head>
<body data-state="idle" data-queries="0">
<h1>__TITLE__</h1>
<div id="info">loading model information...</div>
<form id="form">
  <label>Photo or point cloud (.png .jpg / .ply .obj .off .npy)
    <input type="file" id="file" name="file"
           accept=".png,.jpg,.jpeg,.bmp,.gif,.webp,.tif,.tiff,.ply,.obj,.off,.stl,.npy,.npz"></label>
  <label>Zero-shot labels (comma-separated, point clouds)<input type="text" id="labels" name="labels"></label>
  <label>Top-k shapes<input type="number" id="k" name="k" min="1" max="50"></label>
  <button type="submit" id="submit">Search</button>
</form>
<div id="status"></div>
<div id="error" role="alert"></div>
<div id="results">
  <div id="query-box"><h2>Query</h2><div id="query-name"></div><img id="query-preview" alt="query preview"></div>
  <div id="label-box"><h2>Zero-shot labels</h2><table id="label-table"></table></div>
  <div id="hit-box"><h2>Nearest shapes in the index</h2><div id="hits"></div></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
let queries = 0;
function setState(state) { document.body.dataset.state = state; }
function showError(message) {
  $("error").textContent = message; $("error").style.display = "block";
  $("results").style.display = "none"; $("status").textContent = ""; setState("error");
}
async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("info").textContent = `checkpoint ${info.checkpoint} (${info.experiment}), teacher ${info.teacher}; ` +
      `index of ${info.index_size} shapes at ${info.index}`;
    if (!$("labels").value) $("labels").value = info.labels.join(", ");
    if (!$("k").value) $("k").value = info.k;
  } catch (e) { $("info").textContent = "could not reach the demo server: " + e; }
}
function render(result, file) {
  $("error").style.display = "none";
  $("query-name").textContent = `${result.filename} (${result.kind}, ${result.seconds.toFixed(2)} s)`;
  const preview = $("query-preview");
  if (result.preview) preview.src = result.preview;
  else if (file && result.kind === "image") preview.src = URL.createObjectURL(file);
  const table = $("label-table");
  table.replaceChildren();
  $("label-box").style.display = result.labels ? "block" : "none";
  for (const [name, score] of (result.labels || [])) {
    const row = table.insertRow(); row.className = "label-row";
    const a = row.insertCell(); a.className = "label-name"; a.textContent = name;
    const b = row.insertCell(); b.className = "label-score"; b.textContent = score.toFixed(4);
    const c = row.insertCell(); const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = `${Math.max(2, Math.round(120 * Math.max(0, score)))}px`; c.appendChild(bar);
  }
  const hits = $("hits");
  hits.replaceChildren();
  for (const hit of result.hits) {
    const div = document.createElement("div"); div.className = "hit";
    if (hit.thumb) { const img = document.createElement("img"); img.className = "thumb"; img.src = hit.thumb;
                     img.alt = hit.path; div.appendChild(img); }
    const p = document.createElement("div"); p.className = "hit-path"; p.textContent = `${hit.rank}. ${hit.path}`;
    const s = document.createElement("div"); s.className = "hit-score"; s.textContent = hit.score.toFixed(4);
    div.append(p, s); hits.appendChild(div);
  }
  $("results").style.display = "flex";
  $("status").textContent = `${result.hits.length} shapes` + (result.labels ? `, ${result.labels.length} labels` : "");
  setState("done");
}
async function submit() {
  const file = $("file").files[0];
  if (!file) { showError("Choose a photo or a point cloud first."); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("labels", $("labels").value);
  form.append("k", $("k").value);
  setState("busy"); $("status").textContent = `searching with ${file.name}...`;
  try {
    const response = await fetch("/api/query", { method: "POST", body: form });
    let result;
    try { result = await response.json(); } catch (e) { result = { error: `server answered ${response.status}` }; }
    if (!response.ok || result.error) showError(result.error || `server answered ${response.status}`);
    else render(result, file);
  } catch (e) {
    showError("the request failed: " + e);
  } finally {
    queries += 1; document.body.dataset.queries = String(queries);
  }
}
$("form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("file").addEventListener("change", () => { if ($("file").files.length) submit(); });
loadInfo();
</script>
</body>
</html>
"""


def render_page(title: str = "captionless3d demo") -> str:
    """The page with ``title`` (HTML-escaped)."""
    return PAGE.replace("__TITLE__", html.escape(title))


__all__ = ["PAGE", "render_page"]
