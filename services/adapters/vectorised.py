"""Cache-aware FastConformer-RNNT streaming with a vectorised step (Nemotron, Parakeet realtime).

Every stream's state is a row of preallocated tensors (`slots.py`); a step is one feature
extraction (`features.py`), one `encoder.cache_aware_stream_step`, one batched greedy
label-looping decode continuing each row's decoder state (`greedy.py`), numpy endpointing over
the batch, and text only for streams that emitted tokens (`text.py`). Streams whose last chunk
this is run as a second group, as in NeMo (the encoder keeps all outputs for them).

Two phases (services/engine/adapter.py): `prepare` makes every model call and computes every
new row, host value, text change and event, writing nothing; `commit` stores them. A free slot
always holds a fresh stream's state (zero caches and features, the decoder at <SOS>): slots are
reset when they are freed, so a stream that starts in a step needs no write before its model call.

Utterance rules: an utterance ends on the stream's last chunk, on an end marker token
(`<EOU>`/`<EOB>`, vectorised_eou.py), after `endpoint_silence_ms` of blank frames once it has
tokens, or at `max_utterance_s` (cut before its last word; the decoder keeps its state and the
cut word opens the next utterance). At an endpoint only the decoder row restarts at <SOS>
(encoder cache, feature context and stream time carry on). A client finalize (`end_utterance`;
its item may have no samples: no model call) only splits the text: the utterance so far becomes
a final, the decoder keeps its state, and the next blank-run endpoint restarts it.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import Final

from ..engine.adapter import StepItem, StreamingAdapter
from .boosting import Boosting
from .greedy import select_rows
from .rows import Rows
from .streaming_config import pipeline_config, served_context
from .utterance_events import Prepared, UtteranceEvents


def _wrapper_class():
    """NeMo's cache-aware RNNT model wrapper, also taking `random:` specs (built lazily: NeMo is heavy)."""
    from nemo.collections.asr.inference.model_wrappers.cache_aware_rnnt_inference_wrapper import (
        CacheAwareRNNTInferenceWrapper,
    )

    class ModelWrapper(CacheAwareRNNTInferenceWrapper):
        eou = False
        worker = "this worker"

        def load_model(self, model_name, map_location):
            from .. import random_models
            from .model_check import check_streaming_asr

            if not random_models.is_random(model_name):
                model = CacheAwareRNNTInferenceWrapper.load_model(model_name, map_location)
            else:
                model = random_models.build(model_name, eou=self.eou).to(map_location).eval()
            check_streaming_asr(model, model_name, self.worker)  # before NeMo's wrapper reads it
            return model

    return ModelWrapper


class VectorisedRNNTAdapter(UtteranceEvents, StreamingAdapter):
    eou_model = False  # `random:` specs build the EOU model class (the EOU subclass)
    supports_fork = True
    _eou_id = -1

    worker = "the nemotron worker"  # named in start-up refusals

    def __init__(self, model: str, chunk_ms: int = 160, max_streams: int = 256, device: str = "cpu",
                 dtype: str = "float32", endpoint_silence_ms: int = 720, amp: bool = False, boosting: bool = True,
                 max_utterance_s: Optional[float] = 30.0, cuda_graphs: bool = False):
        """`device`: cpu, cuda or cuda:N (`devices.parse_device`); `dtype` float64 is the exact
        reference on CPU, bfloat16 casts the weights (on the CPU too: the bf16 tests); `amp` runs
        float32 weights under bfloat16 autocast; `boosting=False` drops per-stream key phrases;
        `max_utterance_s` (None: unbounded) cuts an utterance that runs longer; `cuda_graphs`
        turns on NeMo's CUDA-graph greedy decoder (off, as in NeMo's reference streaming config;
        docs/gpu.md)."""
        import torch
        from omegaconf import OmegaConf
        from nemo.collections.asr.inference.factory.cache_aware_pipeline_builder import CacheAwarePipelineBuilder
        from nemo.collections.asr.inference.utils.bpe_decoder import BPEDecoder
        from nemo.collections.asr.inference.utils.pipeline_utils import get_leading_punctuation_regex_pattern

        from ..devices import nemo_device_args
        from .features import FeatureFrontend
        from .greedy import BatchedGreedy
        from .model_check import check_att_context
        from .slots import SlotStore
        from .text import UtteranceText

        self._torch = torch
        self.model_name = model
        self.max_streams = max_streams
        self.endpoint_silence_ms = endpoint_silence_ms
        device_type, device_id = nemo_device_args(device)
        cfg = self._pipeline_config(model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms)
        cfg["asr"]["decoding"]["greedy"]["enable_per_stream_biasing"] = boosting
        cfg["asr"]["decoding"]["greedy"]["use_cuda_graph_decoder"] = cuda_graphs
        cfg = OmegaConf.create(cfg)
        compute = "float32" if dtype == "float64" else dtype
        wrapper_cls = _wrapper_class()
        wrapper_cls.eou, wrapper_cls.worker = self.eou_model, self.worker
        w = wrapper_cls(
            model_name=model, decoding_cfg=CacheAwarePipelineBuilder.get_rnnt_decoding_cfg(cfg), device=device_type,
            device_id=device_id, compute_dtype=compute, use_amp=amp,
        )
        self.wrapper = w
        check_att_context(w.asr_model, model, list(cfg.streaming.att_context_size), chunk_ms)
        if dtype in ("float64", "bfloat16") and w.cast_dtype != getattr(torch, dtype):
            # NeMo's setup_device computes in float32 on a CPU whatever was asked: cast ourselves
            w.asr_model.to(getattr(torch, dtype))
            w.cast_dtype = getattr(torch, dtype)
        self.device = w.device
        self.amp = amp
        self.compute_dtype = w.compute_dtype

        # streaming geometry: NeMo's CacheAwareRNNTPipeline.init_parameters, same expressions
        context = served_context(w.asr_model.encoder.att_context_size_all, list(cfg.streaming.att_context_size))
        cfg.streaming.att_context_size = context
        w.set_default_att_context_size(att_context_size=context)
        pre_encode = w.get_pre_encode_cache_size()
        model_chunk = w.get_chunk_size()
        model_chunk = model_chunk[1] if isinstance(model_chunk, list) else model_chunk
        window_stride = w.get_window_stride()
        subsampling = w.get_subsampling_factor()
        if cfg.streaming.get("chunk_size_in_secs") is not None:
            chunk_secs = cfg.streaming.chunk_size_in_secs
            self.frames_per_chunk = math.ceil(np.trunc(chunk_secs / window_stride) / subsampling)
            w.setup_streaming_params(chunk_size=model_chunk // subsampling, shift_size=self.frames_per_chunk)
        else:
            chunk_secs = model_chunk * window_stride
            self.frames_per_chunk = math.ceil(model_chunk / subsampling)
        pre_encode = pre_encode[1] if isinstance(pre_encode, list) else pre_encode
        buffer_secs = pre_encode * window_stride + model_chunk * window_stride
        self.sample_rate = cfg.streaming.sample_rate
        self.chunk_samples = int(round(chunk_secs * self.sample_rate))
        self.drop_extra = w.drop_extra_pre_encoded
        self.stride_ms = w.get_model_stride(in_milliseconds=True)
        self.encoder = w.asr_model.encoder
        self.max_utterance_frames = (
            None if not max_utterance_s else max(self.frames_per_chunk, int(max_utterance_s * 1000 / self.stride_ms))
        )

        preprocessor, preprocessor_cfg = w.create_preprocessor()
        self.frontend = FeatureFrontend(preprocessor, self.sample_rate, chunk_secs, buffer_secs, window_stride)
        computer = w.asr_model.decoding.decoding.decoding_computer
        self.greedy = BatchedGreedy(computer)
        with torch.inference_mode(), self._autocast():
            sos = computer._get_batched_decoding_state_after_sos(device=self.device, batch_size=1)
        self.store = SlotStore(max_streams, self.encoder, sos, preprocessor_cfg.features,
                               self.frontend.buffer_frames, self.frontend.lookback, w.cast_dtype, self.device)
        if self.store.features.shape[2] != round(buffer_secs / window_stride):
            raise RuntimeError("feature buffer length mismatch")
        puncts = w.supported_punctuation()
        bpe = BPEDecoder(vocabulary=w.get_vocabulary(), tokenizer=w.tokenizer,
                         confidence_aggregator=w.confidence_aggregator, asr_supported_puncts=puncts,
                         word_boundary_tolerance=cfg.streaming.word_boundary_tolerance,
                         token_duration_in_secs=w.get_model_stride(in_secs=True))
        self.text = UtteranceText(max_streams, w.get_vocabulary(), bpe, w.word_separator,
                                  get_leading_punctuation_regex_pattern(puncts))
        self.boosting = Boosting(computer, w.tokenizer)
        # the step's audio is written into a pinned host buffer and goes up without blocking; it is
        # rewritten only after the step's token copy has come back, i.e. after the upload finished
        pin = self.device.type == "cuda"
        self._audio_host = torch.zeros(max_streams, self.chunk_samples, dtype=torch.float32, pin_memory=pin)
        self._audio = self._audio_host.numpy()
        self._marker_array = np.zeros(0, np.int64)  # end-of-utterance marker tokens (EOU subclass)
        # seconds spent in the model's modules vs all of prepare+commit, for the benchmark's compute /
        # bookkeeping split (wall clock: on a GPU these time kernel launches, not kernels)
        self.seconds = {"features": 0.0, "encoder": 0.0, "decoder": 0.0, "step": 0.0}
        # stream id → encoder frames: a stream opening with one drops the tokens of its first frames,
        # which a final made from a copy of another stream already holds (the multitalker's fork)
        self.floors: dict[int, int] = {}

    def _autocast(self):
        return self._torch.amp.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=self.amp)

    def _pipeline_config(self, model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms) -> dict:
        """NeMo's pipeline config (decoding, confidence, context); the EOU subclass adjusts it."""
        return pipeline_config(model, chunk_ms, max_streams, device, "float32", endpoint_silence_ms)

    # ------------------------------------------------------------------ engine contract

    def prepare(self, items: list[StepItem]) -> Prepared:
        return self.prepare_rows(Rows.of(items))

    def prepare_rows(self, rows: Rows) -> Prepared:
        """`prepare` over rows given as columns (rows.py: the multitalker's speaker rows)."""
        started = time.perf_counter()
        plan = self._plan(rows)
        try:
            self._run_model(plan)
            self._events(plan)
        except BaseException:
            self.boosting.discard(plan.boosts.values())  # graphs added for this step: gone again
            raise
        self.seconds["step"] += time.perf_counter() - started
        return plan

    def commit(self, plan: Prepared) -> list:
        """Store the step: first the batch-wide writes (index copies of tensors and vectors whose
        shapes `prepare` made: they cannot fail), then each item's own Python bookkeeping; an
        item whose bookkeeping fails gets its exception as its result, and its stream is
        released — every other item's result and state are as if nothing happened."""
        results: list = list(plan.outputs)
        for i, exc in self.commit_rows(plan).items():
            results[i] = exc
        return results

    def commit_rows(self, plan: Prepared) -> dict[int, Exception]:
        """`commit`'s writes; the rows whose own bookkeeping failed, with the exception."""
        started = time.perf_counter()
        store = self.store
        floors = self.floors
        for stream_id, slot in plan.opened:
            store.take(stream_id, slot)
            if floors:
                floors.pop(stream_id, None)
        with self._torch.inference_mode():
            for write in plan.device_writes:
                write()
            if plan.restart:
                store.restart_decoder(self._torch.from_numpy(np.array(plan.restart, np.int64)).to(self.device))
        for name, (slots, values) in plan.host.items():
            getattr(store, name)[slots] = values
        failed: dict[int, Exception] = {}
        finished = {slot: (action, arg) for slot, action, arg in plan.finished}
        boosts, deltas = plan.boosts, plan.deltas
        for i, slot in enumerate(plan.slots.tolist()):
            if slot < 0 or not (slot in deltas or slot in finished or slot in boosts):
                continue  # nothing of this item's own to store (most rows of most steps)
            try:
                self._commit_slot(plan, slot, finished[slot] if slot in finished else None)
            except Exception as exc:  # this stream's state is suspect: it alone ends
                failed[i] = exc
                self.release(plan.rows.stream_id[i])
        if plan.closed:  # the streams that ended in this step: their slots are freed (and reset) at once
            self.release_all([stream_id for stream_id, _ in plan.closed])
        if self.on_eou is not None:
            for latency in plan.eou_latencies:
                self.on_eou(latency)
        self.seconds["step"] += time.perf_counter() - started
        return failed

    def _commit_slot(self, plan: Prepared, slot: int, finished) -> None:
        if slot in plan.boosts:
            self.boosting.set(slot, plan.boosts[slot])
            self.store.bias_id[slot] = self.boosting.model_id(slot)
        delta = plan.deltas[slot] if slot in plan.deltas else None
        if delta is not None:
            self.text.apply(slot, delta)
        if finished is not None:
            action, arg = finished
            if action == "clear":
                self.text.clear(slot)
            else:  # "keep": the utterance goes on from token `arg` (a max-length cut)
                self.text.keep_from(slot, arg)

    # ------------------------------------------------------------------ prepare, in parts

    def _plan(self, rows: Rows) -> Prepared:
        """Slots (a new stream takes the next free one), key-phrase graphs, and the step's audio."""
        store = self.store
        count = len(rows)
        slots = np.full(count, -1, np.int64)
        fresh = store.free_slots(sum(rows.is_first))
        opened, boosts, new_floors, last_rows, taken = [], {}, {}, [], 0
        batch, valid = np.empty(count, np.int64), np.empty(count, np.int64)
        audio, chunk, slot_of, floors, given, j = self._audio, self.chunk_samples, store.slot_of, self.floors, rows.boost, 0
        columns = zip(rows.stream_id, rows.samples, rows.is_first, rows.is_last, rows.end_utterance, rows.fork)
        try:  # (per row only reads and array writes: this loop runs for every row of a step)
            for i, (stream_id, samples, first, last, end, fork) in enumerate(columns):
                if first:
                    slot = fresh[taken]
                    taken += 1
                    opened.append((stream_id, slot))
                    if stream_id in floors:
                        new_floors[slot] = floors[stream_id]
                elif stream_id in slot_of:
                    slot = slot_of[stream_id]
                else:
                    slot = -1
                slots[i] = slot
                if slot >= 0 and i in given:  # (a fresh slot has no graph: nothing to set without phrases)
                    boosts[slot] = self.boosting.build(given[i] or [])
                k = samples.shape[0]
                if slot < 0 or not (k or last or not end):
                    continue  # a finalize with no new audio: no model call, the utterance is only split
                batch[j] = i
                valid[j] = chunk if fork else k  # a forked tail: its zeros are the silence after it
                audio[j, :k] = samples
                audio[j, k:] = 0.0
                if last:
                    last_rows.append(j)
                j += 1
        except BaseException:
            self.boosting.discard(boosts.values())
            raise
        return Prepared(rows=rows, slots=slots, opened=opened, boosts=boosts, batch=batch[:j], valid=valid[:j],
                        last_rows=last_rows, new_floors=new_floors)

    def _run_model(self, plan: Prepared) -> None:
        """Features, encoder and decoder for every stepped row; new state kept in `plan`."""
        torch, store = self._torch, self.store
        n = len(plan.batch)
        count = len(plan.rows)
        plan.ended = np.zeros(count, bool)
        plan.marker = np.zeros(count, np.int64)
        if not n:
            return
        slots = plan.slots[plan.batch]
        with torch.inference_mode(), self._autocast():
            idx = torch.from_numpy(slots).to(self.device, non_blocking=True)
            audio_t = self._audio_host[:n].to(self.device, non_blocking=True)
            t0 = time.perf_counter()
            buffers, right_pad, write = self.frontend.step(store, idx, audio_t,
                                                           torch.from_numpy(plan.valid).to(self.device))
            forks = np.flatnonzero(np.array(plan.rows.fork, bool)[plan.batch])
            plan.stored = None  # batch rows whose new state is stored (None: all; forks never are)
            if len(forks):
                plan.stored = np.setdiff1d(np.arange(n), forks)
                kept = torch.from_numpy(plan.stored).to(self.device)
                plan.device_writes.append(lambda: write(kept))
            else:
                plan.device_writes.append(write)
            self.seconds["features"] += time.perf_counter() - t0
            is_last = np.zeros(n, bool)
            is_last[plan.last_rows] = True
            groups = [(np.flatnonzero(~is_last), False), (np.flatnonzero(is_last), True)]
            decoded = []
            for rows, keep_all in groups:
                if len(rows):
                    decoded.append((rows, self._decode_group(plan, rows, keep_all, slots, idx, buffers, right_pad)))
        for rows, (lengths, tokens, frames, confidence) in decoded:
            self._account(plan, rows, slots[rows], lengths, tokens, frames, confidence)

    def _decode_group(self, plan, rows, keep_all, slots, idx, buffers, right_pad):
        """Encode and decode one group of rows; their new device state goes into `plan`."""
        torch, store = self._torch, self.store
        if len(rows) != len(slots):
            rows_t = torch.from_numpy(rows).to(self.device)
            idx, buffers, right_pad = idx[rows_t], buffers[rows_t], right_pad[rows_t]
        signal = buffers.to(self.wrapper.cast_dtype)
        length = torch.full((len(rows),), signal.shape[2], dtype=torch.long, device=self.device)
        if keep_all:
            length = length - right_pad
        items = plan.batch[rows]
        t0 = time.perf_counter()
        self._condition(items)
        channel, lookback, cache_len = store.encoder_rows(idx)
        encoded, encoded_len, channel, lookback, cache_len = self.encoder.cache_aware_stream_step(
            processed_signal=signal, processed_signal_length=length, cache_last_channel=channel,
            cache_last_time=lookback, cache_last_channel_len=cache_len, keep_all_outputs=keep_all,
            drop_extra_pre_encoded=self.drop_extra,
        )
        encoded = self._after_encoder(encoded, items)
        t1 = time.perf_counter()
        bias = store.bias_id[slots[rows]].copy()
        if plan.boosts:  # graphs this step sets apply from this chunk on
            for j, slot in enumerate(plan.slots[items].tolist()):
                if slot in plan.boosts:
                    bias[j] = self.boosting.id_of(plan.boosts[slot])
        if not self.greedy.computer.per_stream_biasing_enabled:
            bias = None
        lengths, tokens, frames, confidence, state = self.greedy.step(store, idx, encoded, encoded_len, bias)
        self.seconds["encoder"] += t1 - t0
        self.seconds["decoder"] += time.perf_counter() - t1

        stored = rows if plan.stored is None else np.flatnonzero(np.isin(rows, plan.stored))
        if len(stored) == len(rows):
            def write() -> None:
                store.put_encoder_rows(idx, channel, lookback, cache_len)
                store.put_decoder_rows(idx, state)
        elif len(stored):  # forked rows are left out: their stream's state does not move
            keep = torch.from_numpy(stored).to(self.device)

            def write() -> None:
                store.put_encoder_rows(idx[keep], channel.index_select(1, keep), lookback.index_select(1, keep),
                                       cache_len[keep])
                store.put_decoder_rows(idx[keep], select_rows(state, keep))
        else:  # every row a fork: nothing of this group is stored
            return lengths, tokens, frames, confidence

        plan.device_writes.append(write)
        return lengths, tokens, frames, confidence

    def _condition(self, items: np.ndarray) -> None:
        """Set per-row model inputs besides audio right before an encoder call whose rows are
        these step items (multitalker: speaker targets)."""

    def _after_encoder(self, encoded, items: np.ndarray):
        """The encoder output [B, D, T] of the rows (these step items) as the decoder gets it
        (multilingual: the language prompt is applied here, as in NeMo's prompt models)."""
        return encoded

    def _mark(self, stream_id: int, final: Final, marker: int, now: float, plan: Prepared) -> None:
        """What an end marker says about the final (the EOU subclass)."""

    def compile_boost(self, phrases) -> None:
        self.boosting.compile(phrases)

    def warmup_batch(self, size: int) -> None:
        """Step `size` fresh streams at once, then their (empty) last chunks: the engine's largest
        batch, so a CUDA-graph decoder captures at that size now (streams -1..-size, released)."""
        size = min(size, self.max_streams)
        zeros = np.zeros(self.chunk_samples, np.float32)
        ids = range(-1, -size - 1, -1)
        self.step([StepItem(stream_id=i, samples=zeros, is_first=True, is_last=False) for i in ids])
        self.step([StepItem(stream_id=i, samples=zeros[:0], is_first=False, is_last=True) for i in ids])

    def clone(self, source: int, target: int) -> None:
        """Open stream `target` as an exact copy of open stream `source` (model state, utterance
        text, key phrases) to step ahead on its own and release: the multitalker's forked
        finalize, whose tail can span several chunks. Writes only the copy's free slot."""
        store = self.store
        [slot] = store.free_slots(1)
        src = store.slot_of[source]
        store.take(target, slot)
        store.copy_row(src, slot)  # the key phrases' graph id too; the source keeps owning the graph
        self.text.copy(src, slot)

    def split(self, stream_id: int, ahead_frames: int) -> None:
        """End the stream's utterance now, its text having gone out in a final made from a copy
        (`clone`) that was stepped `ahead_frames` encoder frames further: the tokens the stream
        writes over those frames are in that final too, and are dropped (the fork's rule)."""
        store, slot = self.store, self.store.slot_of[stream_id]
        self.text.clear(slot)
        store.utt_tokens[slot], store.split[slot] = 0, True
        store.drop_before[slot] = store.frames[slot] + ahead_frames
        store.utt_start[slot] = (store.samples[slot] + ahead_frames * self.chunk_samples / self.frames_per_chunk) \
            / self.sample_rate

    def release(self, stream_id: int) -> None:
        self.release_all([stream_id])

    def release_all(self, stream_ids: list[int]) -> None:
        """Forget these streams (those holding a slot): one reset of their rows for all of them."""
        slot_of = self.store.slot_of
        for stream_id in stream_ids:
            if stream_id in slot_of:
                slot = slot_of[stream_id]
                self.boosting.set(slot, None)
                self.text.clear(slot)
        self.store.close_all(stream_ids)

    def active_streams(self) -> int:
        return len(self.store)
