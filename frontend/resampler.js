// Streaming polyphase resampler: a Kaiser-windowed sinc low-pass, exact rational ratio.
//
// The microphone runs at the AudioContext's rate (usually 48 kHz or 44.1 kHz); the worker
// wants 16 kHz. Dropping or averaging samples would fold everything above 8 kHz back into
// the speech band, so every output sample is a dot product of the input with one phase of
// a low-pass filter cut off below the new Nyquist frequency (~80 dB stopband).

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  // Power series; converges fast for the beta values used here.
  let sum = 1, term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) * (x / (2 * k));
    sum += term;
    if (term < 1e-12 * sum) break;
  }
  return sum;
}

export class PolyphaseResampler {
  /**
   * @param {number} rateIn  input sample rate (integer Hz)
   * @param {number} rateOut output sample rate (integer Hz)
   * @param {{passband?: number, stopbandDb?: number}} options
   *   passband: the -6 dB point as a fraction of the output Nyquist (default 0.9);
   *   stopbandDb: attenuation of everything that would alias (default 80).
   */
  constructor(rateIn, rateOut, { passband = 0.9, stopbandDb = 80 } = {}) {
    const g = gcd(Math.round(rateIn), Math.round(rateOut));
    this.up = Math.round(rateOut) / g; // L: phases
    this.down = Math.round(rateIn) / g; // M: input step per output sample, in phases
    const nyquist = 0.5 * Math.min(1, rateOut / rateIn); // cycles per input sample
    // The window method puts the -6 dB point at `cutoff`, mid-transition. The transition
    // ends at the new Nyquist, so nothing that would alias survives; the response is flat
    // up to (2 * passband - 1) * Nyquist (6.4 kHz at 16 kHz out).
    const transition = 2 * nyquist * (1 - passband);
    const cutoff = nyquist - transition / 2;
    const beta = stopbandDb > 50 ? 0.1102 * (stopbandDb - 8.7) : 0.5842 * (stopbandDb - 21) ** 0.4 + 0.07886 * (stopbandDb - 21);
    let taps = Math.ceil((stopbandDb - 7.95) / (14.36 * transition)) + 1;
    taps += taps % 2; // even: as many input samples on each side of the output instant
    this.taps = taps;
    const half = taps / 2;
    const i0Beta = besselI0(beta);
    // table[p * taps + j] weighs input sample (i - half + 1 + j) for an output at i + p/L.
    this.table = new Float32Array(this.up * taps);
    for (let p = 0; p < this.up; p++) {
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        const t = p / this.up + half - 1 - j; // distance from the output instant, input samples
        const x = 2 * cutoff * t;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const r = t / half;
        const window = Math.abs(r) >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - r * r)) / i0Beta;
        const h = 2 * cutoff * sinc * window;
        this.table[p * taps + j] = h;
        sum += h;
      }
      for (let j = 0; j < taps; j++) this.table[p * taps + j] /= sum; // unity gain at DC
    }
    // Input not yet consumed, starting `half - 1` samples of zeros before the stream.
    this.buffer = new Float32Array(4096);
    this.length = half - 1;
    this.base = -(half - 1); // absolute index of buffer[0]
    this.nextIndex = 0; // input sample at or before the next output instant
    this.nextPhase = 0;
  }

  /** Resample a block; returns the output samples it completes (Float32Array). */
  process(input) {
    this._append(input);
    const out = [];
    const { taps, table, up, down } = this;
    const half = taps / 2;
    for (;;) {
      const first = this.nextIndex - half + 1 - this.base; // buffer position of the first tap
      if (this.nextIndex + half - this.base >= this.length) break; // needs input not here yet
      const row = this.nextPhase * taps;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += this.buffer[first + j] * table[row + j];
      out.push(acc);
      this.nextPhase += down;
      this.nextIndex += Math.floor(this.nextPhase / up);
      this.nextPhase %= up;
    }
    this._trim(this.nextIndex - half + 1);
    return Float32Array.from(out);
  }

  _append(input) {
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(Math.max(this.buffer.length * 2, this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
  }

  _trim(firstNeeded) {
    const drop = firstNeeded - this.base;
    if (drop <= 0) return;
    this.buffer.copyWithin(0, drop, this.length);
    this.length -= drop;
    this.base += drop;
  }
}

/** Float samples in [-1, 1] → PCM s16le values. */
export function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s * 32767);
  }
  return out;
}
