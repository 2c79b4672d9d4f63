"""The service's web page (`GET /`): plain HTML + JS, no build step.

Upload a clip or record one from the microphone (MediaRecorder; the recording is decoded in the browser and sent
as a 16-bit WAV, so the service needs no FFmpeg for it), type the transcript and optional previous turns, press
Analyze: the page POSTs to /ser/analyze and draws the probabilities as bars, with the top label, the latency and
any note (speaker normalization, ignored context). Errors are shown in one line.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MER — emotion recognition</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
  main { max-width: 760px; margin: 0 auto; padding: 24px 18px 40px; }
  h1 { font-size: 1.45rem; margin: 0 0 2px; }
  .sub { color: #5b6475; font-size: .9rem; margin-bottom: 18px; }
  section { background: #fff; border-radius: 10px; padding: 16px 18px; margin-bottom: 14px;
            box-shadow: 0 1px 3px rgba(0,0,0,.08); }
  label { display: block; font-weight: 600; margin: 10px 0 6px; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; padding: 8px; border: 1px solid #cfd5df;
             border-radius: 6px; resize: vertical; }
  .row { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
  button { font: inherit; padding: 8px 16px; border-radius: 6px; border: 1px solid #2f5fd0; background: #fff;
           color: #2f5fd0; cursor: pointer; }
  button.primary { background: #2f5fd0; color: #fff; }
  button:disabled { opacity: .5; cursor: default; }
  button.rec { border-color: #c62828; color: #c62828; }
  #status { min-height: 1.3em; font-size: .92rem; color: #5b6475; }
  #status.error { color: #c62828; font-weight: 600; }
  #top { font-size: 1.6rem; font-weight: 700; margin: 4px 0 10px; text-transform: capitalize; }
  .bar-row { display: grid; grid-template-columns: 90px 1fr 60px; gap: 8px; align-items: center; margin: 5px 0; }
  .bar-name { text-transform: capitalize; }
  .bar-track { background: #e8ebf1; border-radius: 4px; height: 18px; overflow: hidden; }
  .bar { background: #7b93d6; height: 100%; width: 0; transition: width .25s; }
  .bar-row.top .bar { background: #2f5fd0; }
  .bar-value { text-align: right; font-variant-numeric: tabular-nums; }
  #meta { color: #5b6475; font-size: .85rem; margin-top: 8px; }
  audio { max-width: 100%; }
</style>
</head>
<body>
<main>
  <h1>Emotion recognition</h1>
  <div class="sub">model <code id="model-id">__MODEL_ID__</code> · classes: __LABELS_TEXT__</div>
  <section>
    <label for="audio-file">Audio clip</label>
    <div class="row">
      <input type="file" id="audio-file" accept="audio/*,.wav,.flac,.mp3,.ogg,.m4a">
      <span>or</span>
      <button type="button" id="record" class="rec">● Record</button>
      <span id="rec-time"></span>
    </div>
    <audio id="preview" controls hidden></audio>
    <label for="text">Transcript <span style="font-weight:400;color:#5b6475">(what is said; optional)</span></label>
    <textarea id="text" rows="2" placeholder="e.g. I can't believe you did that!"></textarea>
    <label for="context">Previous turns <span style="font-weight:400;color:#5b6475">(optional, one per line,
      oldest first)</span></label>
    <textarea id="context" rows="3" placeholder="A: Where were you last night?&#10;B: Out."></textarea>
    <div class="row" style="margin-top:12px">
      <button type="button" id="analyze" class="primary">Analyze</button>
      <span id="status"></span>
    </div>
  </section>
  <section id="result-box">
    <div>Prediction</div>
    <div id="top">—</div>
    <div id="bars"></div>
    <div id="meta"></div>
  </section>
</main>
<script>
const LABELS = __LABELS_JSON__;
const USES_AUDIO = __USES_AUDIO__;
const $ = (id) => document.getElementById(id);
let recorded = null, recorder = null, chunks = [], recStart = 0, recTimer = null;

function drawBars(probs) {
  const bars = $("bars");
  bars.innerHTML = "";
  const best = LABELS.reduce((a, b) => (probs && probs[b] > probs[a] ? b : a), LABELS[0]);
  for (const name of LABELS) {
    const p = probs ? probs[name] : 0;
    const row = document.createElement("div");
    row.className = "bar-row" + (probs && name === best ? " top" : "");
    row.dataset.label = name;
    row.innerHTML = '<span class="bar-name"></span><div class="bar-track"><div class="bar"></div></div>' +
                    '<span class="bar-value"></span>';
    row.querySelector(".bar-name").textContent = name;
    row.querySelector(".bar").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".bar-value").textContent = probs ? (100 * p).toFixed(1) + "%" : "";
    bars.appendChild(row);
  }
}
function status(msg, isError) { $("status").textContent = msg; $("status").className = isError ? "error" : ""; }

function wavFromBuffer(buf) {           // AudioBuffer -> mono 16-bit PCM WAV Blob
  const n = buf.length, sr = buf.sampleRate, mono = new Float32Array(n);
  for (let c = 0; c < buf.numberOfChannels; c++) {
    const d = buf.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += d[i] / buf.numberOfChannels;
  }
  const out = new DataView(new ArrayBuffer(44 + 2 * n));
  const w = (o, s) => { for (let i = 0; i < s.length; i++) out.setUint8(o + i, s.charCodeAt(i)); };
  w(0, "RIFF"); out.setUint32(4, 36 + 2 * n, true); w(8, "WAVE"); w(12, "fmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, sr, true); out.setUint32(28, 2 * sr, true); out.setUint16(32, 2, true);
  out.setUint16(34, 16, true); w(36, "data"); out.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) out.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, mono[i])) * 32767, true);
  return new Blob([out], { type: "audio/wav" });
}

$("record").addEventListener("click", async () => {
  if (recorder && recorder.state === "recording") { recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) { status("recording is not supported here", true); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      clearInterval(recTimer);
      $("record").textContent = "● Record";
      const blob = new Blob(chunks, { type: recorder.mimeType });
      try {
        const ctx = new (window.AudioContext || window.webkitAudioContext)();
        recorded = wavFromBuffer(await ctx.decodeAudioData(await blob.arrayBuffer()));
        $("audio-file").value = "";
        $("preview").src = URL.createObjectURL(recorded); $("preview").hidden = false;
        status("recorded " + ((Date.now() - recStart) / 1000).toFixed(1) + " s");
      } catch (err) { status("could not decode the recording: " + err, true); }
    };
    recorder.start(); recStart = Date.now();
    $("record").textContent = "■ Stop";
    recTimer = setInterval(() => { $("rec-time").textContent = ((Date.now() - recStart) / 1000).toFixed(1) + " s"; }, 200);
  } catch (err) { status("microphone: " + err.message, true); }
});

$("audio-file").addEventListener("change", () => {
  const f = $("audio-file").files[0];
  if (f) { recorded = null; $("preview").src = URL.createObjectURL(f); $("preview").hidden = false; }
});

$("analyze").addEventListener("click", async () => {
  const form = new FormData();
  const file = $("audio-file").files[0];
  if (file) form.append("audio", file, file.name);
  else if (recorded) form.append("audio", recorded, "recording.wav");
  else if (USES_AUDIO) { status("choose a file or record a clip first", true); return; }
  form.append("text", $("text").value);
  form.append("context", $("context").value);
  $("analyze").disabled = true; status("analyzing…");
  try {
    const resp = await fetch("ser/analyze", { method: "POST", body: form });
    const body = await resp.json();
    if (!resp.ok) { status(body.error || ("HTTP " + resp.status), true); return; }
    $("top").textContent = body.label;
    drawBars(body.probabilities);
    $("meta").textContent = (body.calibrated ? "calibrated (T = " + body.temperature.toFixed(2) + ")"
                                               : "uncalibrated") +
      " · " + body.latency_ms.toFixed(0) + " ms" + (body.duration_s ? " · clip " + body.duration_s.toFixed(2) + " s" : "") +
      (body.notes.length ? " · " + body.notes.join("; ") : "");
    status("done");
  } catch (err) { status("request failed: " + err, true); }
  finally { $("analyze").disabled = false; }
});
drawBars(null);
</script>
</body>
</html>
"""


def page_html(labels: list[str], model_id: str, uses_audio: bool = True, uses_text: bool = True) -> str:
    """The page for a model with these labels."""
    return (_PAGE.replace("__MODEL_ID__", html.escape(model_id))
            .replace("__LABELS_TEXT__", html.escape(", ".join(labels)))
            .replace("__LABELS_JSON__", json.dumps(list(labels)))
            .replace("__USES_AUDIO__", "true" if uses_audio else "false"))
