// The page: microphone → AudioWorklet (16 kHz PCM) → `/v1/listen` → partials and finals.
//
// Contract for automation: `/#token=T&autostart=1` starts at once with token T (the URL
// fragment never leaves the browser; the token goes to the worker as a WebSocket
// subprotocol, never in a URL, so no server or proxy log can keep it); every
// final is a `.final` element appended to `#transcript` (with `data-speaker` when the
// worker sends one, and `data-latency-ms`: audio sent → final received); the current
// partial is `#partial`; `#status[data-state]` says idle/connecting/listening/stopped/error.
// Text from the worker is only ever set with textContent.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 640; // 40 ms per WebSocket frame
const MAX_QUEUED_FRAMES = 250; // 10 s of audio waiting for `ready`
const LISTEN_SUBPROTOCOL = "nvasr.v1"; // pipecat_nvasr/protocol.py
const TOKEN_SUBPROTOCOL_PREFIX = "nvasr.token.";

const $ = (id) => document.getElementById(id);
const ui = {
  token: $("token"), start: $("start"), stop: $("stop"), status: $("status"), level: $("level"),
  transcript: $("transcript"), partial: $("partial"), latency: $("latency"), model: $("model"),
};

let run = null; // the current listening run, or null

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function explainClose(event, lastError) {
  const code = lastError?.code;
  if (event.code === 1008 || code === "unauthorized") {
    return "The worker refused the token (missing, wrong or expired). Ask your server for a fresh short-lived token.";
  }
  if (event.code === 1013 || code === "overloaded") {
    return "The worker is busy (overloaded). Try again in a moment.";
  }
  if (lastError) return `The worker ended the session: ${lastError.message} (${lastError.code}).`;
  return `Connection lost: the network or the worker went away (code ${event.code}). Press Start to reconnect.`;
}

function explainMicError(error) {
  if (error.name === "NotAllowedError" || error.name === "SecurityError") {
    return "Microphone access was denied. Allow the microphone for this site and press Start again.";
  }
  if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
    return "No microphone was found. Plug one in and press Start again.";
  }
  if (!navigator.mediaDevices) {
    return "This page needs a secure origin (https:// or http://localhost) to use the microphone.";
  }
  return `The microphone could not be opened: ${error.message || error.name}.`;
}

class ListenRun {
  constructor(token) {
    this.token = token;
    this.ready = false;
    this.stopping = false;
    this.finished = false;
    this.queue = [];
    this.sentSamples = 0;
    this.sendLog = []; // [samples sent so far, performance.now()] per frame
    this.latencies = [];
    this.lastError = null;
  }

  async start() {
    setStatus("connecting", "Opening the microphone…");
    this.openSocket(); // in parallel with the microphone: speech is queued until `ready`
    try {
      if (!navigator.mediaDevices) throw new TypeError("mediaDevices unavailable");
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      this.fail(explainMicError(error));
      return;
    }
    if (this.finished) return this.stopMic();
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule("/static/capture-worklet.js");
    if (this.finished) return this.stopMic();
    this.source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "pcm-capture", {
      processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
    });
    this.node.port.onmessage = (event) => this.onFrame(event.data);
    this.mute = this.context.createGain(); // pulls the graph without playing the mic back
    this.mute.gain.value = 0;
    this.source.connect(this.node).connect(this.mute).connect(this.context.destination);
    this.context.onstatechange = () => {
      if (this.context?.state === "running" && this.ready && !this.stopping) setStatus("listening", "Listening… speak now.");
    };
    if (this.context.state !== "running") await this.context.resume().catch(() => {});
    if (this.context.state !== "running") {
      setStatus("warning", "The browser holds audio until you interact: click anywhere on the page.");
      document.addEventListener("click", () => this.context && this.context.resume(), { once: true });
    } else if (!this.ready) {
      setStatus("connecting", "Connecting to the worker…");
    }
  }

  openSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ sample_rate: String(TARGET_RATE) });
    const protocols = [LISTEN_SUBPROTOCOL];
    if (this.token) protocols.push(TOKEN_SUBPROTOCOL_PREFIX + this.token);
    try {
      this.socket = new WebSocket(`${scheme}//${location.host}/v1/listen?${query}`, protocols);
    } catch (error) { // a subprotocol may only hold token characters: A-Z a-z 0-9 and ._-~ etc.
      this.socket = null;
      this.fail("This token has characters a browser cannot send; use a short-lived token from POST /v1/tokens.");
      return;
    }
    this.socket.binaryType = "arraybuffer";
    this.socket.onmessage = (event) => this.onMessage(event.data);
    this.socket.onclose = (event) => this.onClose(event);
  }

  onFrame({ pcm, rms }) {
    ui.level.style.width = `${Math.min(100, Math.round(rms * 400))}%`;
    if (this.stopping || this.finished) return;
    if (!this.ready) {
      this.queue.push(pcm);
      if (this.queue.length > MAX_QUEUED_FRAMES) this.queue.shift();
      return;
    }
    this.send(pcm);
  }

  send(pcm) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(pcm);
    this.sentSamples += pcm.byteLength / 2;
    this.sendLog.push([this.sentSamples, performance.now()]);
    if (this.sendLog.length > 3000) this.sendLog.splice(0, 1000);
  }

  onMessage(data) {
    if (typeof data !== "string") return;
    let message;
    try { message = JSON.parse(data); } catch { return; }
    switch (message.type) {
      case "ready":
        this.ready = true;
        // A local .nemo file is named by its file name, not the server's path to it.
        const model = String(message.model).endsWith(".nemo") ? String(message.model).split("/").pop() : message.model;
        ui.model.textContent = `${model} · ${message.chunk_ms} ms chunks`;
        if (!this.stopping) setStatus("listening", "Listening… speak now.");
        for (const pcm of this.queue.splice(0)) this.send(pcm);
        break;
      case "partial":
        ui.partial.textContent = message.text;
        break;
      case "final":
        this.addFinal(message);
        break;
      case "error":
        this.lastError = message;
        if (message.code === "bad_audio" || message.code === "bad_message") {
          setStatus("warning", `Worker: ${message.message}`);
        }
        break;
      case "closed":
        this.finished = true;
        break;
    }
  }

  addFinal(message) {
    ui.partial.textContent = "";
    if (!message.text) return;
    const line = document.createElement("p");
    line.className = "final";
    if (message.speaker) {
      line.dataset.speaker = String(message.speaker);
      const label = document.createElement("span");
      label.className = "speaker";
      label.textContent = String(message.speaker);
      line.append(label);
    }
    line.append(document.createTextNode(message.text));
    const latency = this.latencyOf(message.end);
    if (latency !== null) {
      line.dataset.latencyMs = String(Math.round(latency));
      this.latencies.push(latency);
      const sorted = [...this.latencies].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      ui.latency.textContent =
        `Last final ${Math.round(latency)} ms after its audio was sent · median ${Math.round(median)} ms over ${sorted.length}`;
    }
    ui.transcript.append(line);
    line.scrollIntoView({ block: "nearest" });
  }

  // Audio sent → final received: from when the frame holding the utterance's last sample
  // left the page to now. It includes the worker's endpointing wait, as a user feels it.
  latencyOf(end) {
    if (typeof end !== "number") return null;
    const sample = end * TARGET_RATE;
    const entry = this.sendLog.find(([sent]) => sent >= sample);
    return entry ? performance.now() - entry[1] : null;
  }

  onClose(event) {
    const wasFinished = this.finished || this.stopping;
    this.finished = true;
    this.stopMic();
    if (run === this) run = null;
    setButtons(false);
    if (wasFinished && event.code === 1000) {
      setStatus("stopped", "Stopped.");
    } else if (this.stopping && !this.lastError) {
      setStatus("stopped", "Stopped.");
    } else {
      setStatus("error", explainClose(event, this.lastError));
    }
  }

  fail(text) {
    this.finished = true;
    this.stopMic();
    if (this.socket) {
      this.socket.onclose = null; // this message, not the socket's close, says what went wrong
      if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    }
    if (run === this) run = null;
    setButtons(false);
    setStatus("error", text);
  }

  // Stop: the mic goes off now; the worker transcribes what it has and sends `closed`.
  stop({ immediately = false } = {}) {
    this.stopping = true;
    this.stopMic();
    if (!this.socket) return;
    if (immediately || !this.ready || this.socket.readyState !== WebSocket.OPEN) {
      if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
      return;
    }
    setStatus("connecting", "Finishing the last words…");
    this.socket.send(JSON.stringify({ type: "close" }));
    setTimeout(() => { if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000); }, 5000);
  }

  stopMic() {
    if (this.node) { this.node.port.postMessage("stop"); this.node.disconnect(); }
    if (this.source) this.source.disconnect();
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context && this.context.state !== "closed") this.context.close().catch(() => {});
    this.node = this.source = this.stream = this.context = null;
    ui.level.style.width = "0";
  }
}

function setButtons(listening) {
  ui.start.disabled = listening;
  ui.stop.disabled = !listening;
}

function start() {
  if (run) return;
  run = new ListenRun(ui.token.value.trim());
  setButtons(true);
  run.start().catch((error) => run && run.fail(`Could not start: ${error.message || error}`));
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => run && run.stop());
window.addEventListener("pagehide", () => run && run.stop({ immediately: true }));

// `#token=…&autostart=1`: take the token from the fragment (never sent to a server), then
// drop it from the address bar and history. `autostart` may also be in the query.
const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
if (fragment.has("token")) {
  ui.token.value = fragment.get("token");
  fragment.delete("token");
  const rest = fragment.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}
const query = new URLSearchParams(location.search);
if (fragment.get("autostart") === "1" || query.get("autostart") === "1") start();
