// AudioWorklet: microphone blocks → 16 kHz PCM s16le frames for the worker.
//
// Runs on the audio thread. Each 128-sample render quantum is mixed to mono, resampled
// (windowed-sinc polyphase, see resampler.js) and collected into fixed frames; each full
// frame goes to the page as a transferable ArrayBuffer with its RMS level for the meter.

import { PolyphaseResampler, toInt16 } from "./resampler.js";

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameSamples = 640 } = options.processorOptions || {};
    this.resampler = new PolyphaseResampler(sampleRate, targetRate);
    this.frame = new Float32Array(frameSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(channels[0].length);
      for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    const resampled = this.resampler.process(mono);
    for (let i = 0; i < resampled.length; i++) {
      this.frame[this.filled++] = resampled[i];
      if (this.filled === this.frame.length) this.flush();
    }
    return true;
  }

  flush() {
    let energy = 0;
    for (let i = 0; i < this.frame.length; i++) energy += this.frame[i] * this.frame[i];
    const pcm = toInt16(this.frame);
    this.port.postMessage({ pcm: pcm.buffer, rms: Math.sqrt(energy / this.frame.length) }, [pcm.buffer]);
    this.filled = 0;
  }
}

registerProcessor("pcm-capture", PcmCapture);
