// A dependency-free SmallWebRTC client: one RTCPeerConnection, no STUN (host candidates
// only), the offer POSTed to the bot's `/api/offer`, and a `chat` data channel on which
// the bot sends `{"type":"transcript","text":…,"final":bool}` as the user speaks.
//
// Same automation contract as the main page: `?autostart=1`, `.final` in `#transcript`,
// `#partial`, `#status[data-state]`. Each final's `data-latency-ms` is the time from the
// end of the user's speech (the mic level falling silent, measured here) to the final.

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"), stop: $("stop"), status: $("status"), level: $("level"),
  transcript: $("transcript"), partial: $("partial"), latency: $("latency"), audio: $("bot-audio"),
};
const SPEECH_RMS = 0.01; // -40 dBFS: above this the user is speaking

let session = null;

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

class BotSession {
  constructor() {
    this.lastVoice = null; // performance.now() when the mic was last above SPEECH_RMS
    this.latencies = [];
    this.closed = false;
  }

  async start() {
    setStatus("connecting", "Opening the microphone…");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      const denied = error.name === "NotAllowedError" || error.name === "SecurityError";
      throw new Error(denied ? "Microphone access was denied. Allow it for this site and try again."
        : `The microphone could not be opened: ${error.message || error.name}.`);
    }
    this.watchLevel();
    setStatus("connecting", "Connecting to the bot…");
    this.pc = new RTCPeerConnection({ iceServers: [] });
    this.pc.addTransceiver(this.stream.getAudioTracks()[0], { direction: "sendrecv" });
    this.pc.addTransceiver("video", { direction: "recvonly" });
    this.pc.ontrack = (event) => { if (event.track.kind === "audio") ui.audio.srcObject = new MediaStream([event.track]); };
    this.pc.onconnectionstatechange = () => this.onConnectionState(this.pc.connectionState);
    this.channel = this.pc.createDataChannel("chat", { ordered: true });
    this.channel.onopen = () => {
      this.ping = setInterval(() => this.channel.readyState === "open" && this.channel.send(`ping: ${Date.now()}`), 1000);
    };
    this.channel.onmessage = (event) => this.onMessage(event.data);

    await this.pc.setLocalDescription(await this.pc.createOffer());
    await this.iceGathered();
    const reply = await fetch("/api/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: this.pc.localDescription.sdp, type: this.pc.localDescription.type }),
    });
    if (!reply.ok) throw new Error(`The bot refused the offer (HTTP ${reply.status}).`);
    const answer = await reply.json();
    await this.pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  }

  iceGathered() {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (this.pc.iceGatheringState === "complete") resolve(); };
      this.pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 2000); // host candidates come at once; never wait long
    });
  }

  watchLevel() {
    this.context = new AudioContext();
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    this.context.createMediaStreamSource(this.stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.meter = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let energy = 0;
      for (const s of samples) energy += s * s;
      const rms = Math.sqrt(energy / samples.length);
      ui.level.style.width = `${Math.min(100, Math.round(rms * 400))}%`;
      if (rms > SPEECH_RMS) this.lastVoice = performance.now();
    }, 20);
  }

  onConnectionState(state) {
    if (state === "connected") setStatus("listening", "Connected: speak, the bot is listening.");
    if (state === "failed") this.stop("error", "The WebRTC connection failed (no route between you and the bot).");
    if (state === "disconnected" && !this.closed) this.stop("error", "Connection lost.");
  }

  onMessage(data) {
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message.type !== "transcript" || typeof message.text !== "string") return;
    if (!message.final) { ui.partial.textContent = message.text; return; }
    ui.partial.textContent = "";
    if (!message.text) return;
    const line = document.createElement("p");
    line.className = "final";
    line.textContent = message.text;
    if (this.lastVoice !== null) {
      const latency = performance.now() - this.lastVoice;
      line.dataset.latencyMs = String(Math.round(latency));
      this.latencies.push(latency);
      ui.latency.textContent = `Last final ${Math.round(latency)} ms after you stopped speaking`;
    }
    ui.transcript.append(line);
  }

  stop(state = "stopped", text = "Disconnected.") {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.ping);
    clearInterval(this.meter);
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) this.context.close().catch(() => {});
    if (this.pc) this.pc.close();
    ui.level.style.width = "0";
    ui.start.disabled = false;
    ui.stop.disabled = true;
    if (session === this) session = null;
    setStatus(state, text);
  }
}

function start() {
  if (session) return;
  session = new BotSession();
  ui.start.disabled = true;
  ui.stop.disabled = false;
  const current = session;
  current.start().catch((error) => current.stop("error", error.message || String(error)));
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => session && session.stop());
window.addEventListener("pagehide", () => session && session.stop());
if (new URLSearchParams(location.search).get("autostart") === "1") start();
