/// The page at `/`: plain HTML, CSS and JavaScript, nothing fetched from another host.
/// It lists the models, builds a `POST /api/v1/jobs` body from the form, follows the job's
/// server-sent events (live x_t and predicted-x0 previews) and keeps a gallery of this visit's results.
/// With `--api-key`, open it as `/?api_key=KEY`: the key is passed on to every call.
enum WebPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Diffuse</title>
<style>
  :root { --ink: #1d2330; --muted: #677086; --line: #d8dce6; --accent: #2f6fed; --paper: #f6f7fb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--paper); }
  header { padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); display: flex; gap: 16px; align-items: baseline; }
  header h1 { margin: 0; font-size: 20px; }
  header span { color: var(--muted); font-size: 13px; }
  main { display: grid; grid-template-columns: minmax(280px, 360px) 1fr; gap: 20px; padding: 20px; }
  form, section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px; }
  label { display: block; margin: 10px 0 4px; font-size: 13px; color: var(--muted); }
  input[type=text], input[type=number], select, textarea { width: 100%; padding: 6px 8px; border: 1px solid var(--line); border-radius: 5px; font: inherit; }
  textarea { resize: vertical; min-height: 54px; }
  .row { display: flex; gap: 10px; } .row > div { flex: 1; }
  .range { display: flex; gap: 8px; align-items: center; } .range input { flex: 1; } .range output { width: 44px; text-align: right; }
  button { margin-top: 14px; padding: 8px 16px; border: 0; border-radius: 5px; background: var(--accent); color: #fff; font: inherit; cursor: pointer; }
  button.secondary { background: #e6e9f0; color: var(--ink); }
  button:disabled { opacity: .5; cursor: default; }
  .previews { display: flex; gap: 16px; flex-wrap: wrap; }
  .previews figure { margin: 0; }
  .previews img, .result img { image-rendering: pixelated; width: 256px; min-height: 64px; background: #eef0f5; border-radius: 4px; display: block; }
  figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
  progress { width: 100%; height: 10px; margin: 10px 0; }
  #status { font-size: 13px; color: var(--muted); min-height: 1.4em; }
  #error { color: #b3261e; font-size: 13px; min-height: 1.4em; }
  .result { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 12px; }
  .result a, .gallery a { font-size: 12px; }
  .gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: 8px; margin-top: 8px; }
  .gallery img { width: 100%; image-rendering: pixelated; border-radius: 4px; display: block; }
  .hidden { display: none; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  section + section { margin-top: 16px; }
</style>
</head>
<body>
<header><h1>Diffuse</h1><span id="modelInfo">loading models…</span></header>
<main>
<form id="form" autocomplete="off" novalidate>
  <label for="model">Model</label>
  <select id="model" name="model"></select>
  <div id="promptFields">
    <label for="prompt">Prompt</label>
    <textarea id="prompt" name="prompt" placeholder="a photograph of an astronaut riding a horse"></textarea>
    <label for="negative">Negative prompt</label>
    <textarea id="negative" name="negative"></textarea>
  </div>
  <div id="classFields" class="hidden">
    <label for="classes">Class</label>
    <select id="classes" name="classes"></select>
  </div>
  <div id="colourFields">
    <label><input type="checkbox" id="useColour"> Colour guidance</label>
    <div class="row"><div><input type="color" id="colour" value="#1ae680"></div>
      <div class="range"><input type="range" id="guideScale" min="0" max="200" step="1" value="40"><output id="guideScaleValue">40</output></div></div>
  </div>
  <div id="loraFields" class="hidden">
    <label for="lora">LoRA</label>
    <div class="row"><div><select id="lora"></select></div>
      <div class="range"><input type="range" id="loraScale" min="0" max="2" step="0.05" value="1"><output id="loraScaleValue">1</output></div></div>
  </div>
  <div id="clipFields" class="hidden">
    <label for="clipModel">CLIP guidance</label>
    <div class="row"><div><select id="clipModel"></select></div>
      <div class="range"><input type="range" id="clipScale" min="0" max="1000" step="10" value="100"><output id="clipScaleValue">100</output></div></div>
  </div>
  <div id="classifierFields" class="hidden">
    <label for="classifier">Classifier guidance</label>
    <div class="row"><div><select id="classifier"></select></div>
      <div class="range"><input type="range" id="classifierScale" min="0" max="20" step="0.5" value="3"><output id="classifierScaleValue">3</output></div></div>
    <div id="classifierClassField"><label for="classifierClass">Class for the classifier</label><input type="text" id="classifierClass" value="0"></div>
  </div>
  <label for="guidanceScale">Guidance scale (classifier-free)</label>
  <div class="range"><input type="range" id="guidanceScale" min="0" max="20" step="0.5" value="7.5"><output id="guidanceScaleValue">7.5</output></div>
  <div class="row">
    <div><label for="scheduler">Scheduler</label><select id="scheduler"></select></div>
    <div><label for="steps">Steps</label><input type="number" id="steps" min="1" max="200" value="20"></div>
  </div>
  <div class="row">
    <div><label for="seed">Seed (-1 random)</label><input type="number" id="seed" value="-1"></div>
    <div><label for="count">Count</label><input type="number" id="count" min="1" max="8" value="1"></div>
  </div>
  <div class="row" id="sizeFields">
    <div><label for="width">Width</label><input type="number" id="width" min="8" step="8" value="512"></div>
    <div><label for="height">Height</label><input type="number" id="height" min="8" step="8" value="512"></div>
  </div>
  <button type="submit" id="start">Generate</button>
  <button type="button" id="cancel" class="secondary" disabled>Cancel</button>
</form>
<div>
<section>
  <h2>Sampling</h2>
  <progress id="progress" value="0" max="1"></progress>
  <div id="status">idle</div>
  <div id="error" role="alert"></div>
  <div class="previews">
    <figure><img id="previewSample" alt="" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"><figcaption>x<sub>t</sub></figcaption></figure>
    <figure><img id="previewOriginal" alt="" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"><figcaption>predicted x<sub>0</sub></figcaption></figure>
  </div>
  <div class="result" id="result"></div>
</section>
<section>
  <h2>Gallery</h2>
  <div class="gallery" id="gallery"></div>
</section>
</div>
</main>
<script>
"use strict";
const key = new URLSearchParams(location.search).get("api_key");
const withKey = (path) => key ? path + (path.includes("?") ? "&" : "?") + "api_key=" + encodeURIComponent(key) : path;
const $ = (id) => document.getElementById(id);
const schedulers = ["default", "ddim", "euler", "euler-ancestral", "dpm", "unipc", "pndm", "lms", "heun", "ddpm"];
let models = [], resources = { loras: [], clip_models: [], classifiers: [] }, job = null, events = null, previewCount = 0;

for (const name of schedulers) { const o = document.createElement("option"); o.value = o.textContent = name; $("scheduler").append(o); }
for (const [range, out] of [["guidanceScale", "guidanceScaleValue"], ["guideScale", "guideScaleValue"], ["loraScale", "loraScaleValue"],
                            ["clipScale", "clipScaleValue"], ["classifierScale", "classifierScaleValue"]]) {
  $(range).addEventListener("input", () => { $(out).textContent = $(range).value; });
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, key ? { "Authorization": "Bearer " + key } : {});
  const response = await fetch(path, Object.assign({ headers }, options));
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = { detail: text }; }
  if (!response.ok) throw new Error((body && body.detail) || response.statusText);
  return body;
}

function selectedModel() { return models.find((m) => m.name === $("model").value); }

function showModel() {
  const model = selectedModel();
  if (!model) return;
  $("promptFields").classList.toggle("hidden", !model.takes_prompt);
  $("sizeFields").classList.toggle("hidden", !model.takes_prompt);
  $("colourFields").classList.toggle("hidden", model.takes_prompt || model.channels !== 3);
  $("classFields").classList.toggle("hidden", model.kind !== "class-conditional");
  $("loraFields").classList.toggle("hidden", !model.takes_prompt || resources.loras.length === 0);
  $("clipFields").classList.toggle("hidden", !model.takes_prompt || resources.clip_models.length === 0);
  $("classifierFields").classList.toggle("hidden", model.takes_prompt || resources.classifiers.length === 0);
  $("classifierClassField").classList.toggle("hidden", model.kind === "class-conditional");
  $("classes").innerHTML = "";
  model.classes.forEach((name, index) => {
    const o = document.createElement("option"); o.value = String(index); o.textContent = index + ": " + name; $("classes").append(o);
  });
  $("width").value = model.width; $("height").value = model.height;
  const scale = model.takes_prompt ? 7.5 : (model.kind === "class-conditional" ? 3 : 1);
  $("guidanceScale").value = scale; $("guidanceScaleValue").textContent = scale;
  $("guidanceScale").disabled = model.kind === "unconditional";
  $("modelInfo").textContent = model.name + " · " + model.kind + " · " + model.width + "×" + model.height + " · " + model.scheduler;
}

async function loadModels() {
  try {
    const list = await api(withKey("/api/v1/models"));
    models = list.models;
    resources = { loras: list.loras || [], clip_models: list.clip_models || [], classifiers: list.classifiers || [] };
    for (const [select, names] of [["lora", resources.loras], ["clipModel", resources.clip_models], ["classifier", resources.classifiers]]) {
      $(select).innerHTML = "<option value=\"\">none</option>";
      for (const name of names) { const o = document.createElement("option"); o.value = o.textContent = name; $(select).append(o); }
    }
    $("model").innerHTML = "";
    for (const model of models) { const o = document.createElement("option"); o.value = o.textContent = model.name; $("model").append(o); }
    showModel();
  } catch (error) { $("modelInfo").textContent = "cannot list models: " + error.message; }
}
$("model").addEventListener("change", showModel);

function body() {
  const model = selectedModel();
  const request = { model: model.name, steps: Number($("steps").value), seed: Number($("seed").value), count: Number($("count").value),
                    preview_every: 1 };
  if ($("scheduler").value !== "default") request.scheduler = $("scheduler").value;
  if (model.takes_prompt) {
    request.prompt = $("prompt").value;
    if ($("negative").value) request.negative_prompt = $("negative").value;
    request.width = Number($("width").value); request.height = Number($("height").value);
    request.guidance_scale = Number($("guidanceScale").value);
    if ($("lora").value) request.loras = [{ name: $("lora").value, scale: Number($("loraScale").value) }];
    if ($("clipModel").value) { request.clip_model = $("clipModel").value; request.clip_guidance_scale = Number($("clipScale").value); }
  } else {
    if (model.kind === "class-conditional") { request.classes = $("classes").value; request.guidance_scale = Number($("guidanceScale").value); }
    if ($("useColour").checked) { request.color = $("colour").value; request.guide_scale = Number($("guideScale").value); }
    if ($("classifier").value) {
      request.classifier = $("classifier").value; request.classifier_scale = Number($("classifierScale").value);
      if (model.kind !== "class-conditional") request.classes = $("classifierClass").value;
    }
  }
  return request;
}

function setRunning(running) { $("start").disabled = running; $("cancel").disabled = !running; }

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = ""; $("result").innerHTML = ""; previewCount = 0;
  setRunning(true);
  try {
    const created = await api(withKey("/api/v1/jobs"), { method: "POST", body: JSON.stringify(body()) });
    job = created.job;
    $("status").textContent = created.position > 0 ? "queued behind " + created.position : "starting";
    follow(job.id);
  } catch (error) { $("error").textContent = error.message; setRunning(false); }
});

$("cancel").addEventListener("click", async () => {
  if (!job) return;
  try { await api(withKey("/api/v1/jobs/" + job.id), { method: "DELETE" }); } catch (error) { $("error").textContent = error.message; }
});

function follow(id) {
  if (events) events.close();
  events = new EventSource(withKey("/api/v1/jobs/" + id + "/events"));
  events.addEventListener("queued", (e) => { $("status").textContent = "queued"; });
  events.addEventListener("started", (e) => { $("status").textContent = "sampling"; });
  events.addEventListener("log", (e) => { $("status").textContent = JSON.parse(e.data).message; });
  events.addEventListener("step", (e) => {
    const step = JSON.parse(e.data);
    $("progress").max = step.steps; $("progress").value = step.step;
    $("status").textContent = "step " + step.step + " / " + step.steps + " · t = " + Math.round(step.timestep) + " · " + step.steps_per_second.toFixed(1) + " steps/s";
    if (step.sample) { $("previewSample").src = "data:image/png;base64," + step.sample; previewCount++; document.body.dataset.previews = previewCount; }
    if (step.predicted_original) $("previewOriginal").src = "data:image/png;base64," + step.predicted_original;
  });
  const finish = async (e) => {
    events.close(); events = null; setRunning(false);
    const snapshot = JSON.parse(e.data);
    $("status").textContent = snapshot.state + (snapshot.seconds ? " in " + snapshot.seconds.toFixed(1) + " s" : "");
    if (snapshot.state !== "succeeded") { $("error").textContent = snapshot.error || snapshot.state; return; }
    const full = await api(withKey("/api/v1/jobs/" + id));
    full.images.forEach((image, index) => {
      const link = withKey("/api/v1/jobs/" + id + "/images/" + index + ".png");
      const figure = document.createElement("figure");
      figure.innerHTML = '<img alt="result"><figcaption><a download>download PNG</a></figcaption>';
      figure.querySelector("img").src = "data:image/png;base64," + image;
      figure.querySelector("a").href = link;
      $("result").append(figure);
      const tile = document.createElement("a");
      tile.href = link; tile.title = full.info;
      tile.innerHTML = '<img alt="gallery image">';
      tile.querySelector("img").src = "data:image/png;base64," + image;
      $("gallery").prepend(tile);
    });
    document.body.dataset.done = id;
  };
  for (const name of ["succeeded", "failed", "cancelled"]) events.addEventListener(name, finish);
  events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) { setRunning(false); } };
}

loadModels();
</script>
</body>
</html>
"""#
}
