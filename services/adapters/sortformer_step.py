"""One streaming Sortformer step for every session at once, as batched tensor ops.

NeMo's `forward_streaming_step` with `async_streaming` packs each row's speaker cache, FIFO and
chunk (`concat_and_pad`) and updates them (`streaming_update_async`) in Python loops over the
batch rows, with a `.item()` per row and field: on a GPU that is dozens of kernel launches and
host syncs per session and step. Here the same computation is index arithmetic over the whole
batch: a fixed number of ops whatever the number of sessions, and no host read. Row b of every
tensor is session b's state; lengths are tensors on the model's device.

Differences from NeMo's call, none of which changes a row's values (tests/test_sortformer_vectorised.py
holds them equal to `streaming_update_async` in float64):
- the left offset `lc` is one value PER ROW (a session's first chunk has none), so first chunks
  share the call with the rest; right context needs no offset at all (it is in `chunk_lengths`);
- the packed sequence has the fixed width cache + FIFO + chunk (NeMo: the batch's longest row):
  frames past a row's length are masked by the encoder, as they are in NeMo's own batches;
- the speaker cache is compressed for every row and kept where a row overflowed (NeMo selects the
  rows with `torch.where` first: a host sync and a data-dependent batch).
"""

from __future__ import annotations

import torch


def pack_rows(spkcache, spkcache_lengths, fifo, fifo_lengths, chunk, chunk_lengths):
    """Each row's `spkcache[:s] + fifo[:f] + chunk[:c]`, zero-padded to the fixed full width."""
    batch, cache_width, dim = spkcache.shape
    fifo_width, chunk_width = fifo.shape[1], chunk.shape[1]
    width = cache_width + fifo_width + chunk_width
    source = torch.cat([spkcache, fifo, chunk, chunk.new_zeros(batch, 1, dim)], dim=1)
    q = torch.arange(width, device=chunk.device).unsqueeze(0)
    s, f, c = spkcache_lengths.unsqueeze(1), fifo_lengths.unsqueeze(1), chunk_lengths.unsqueeze(1)
    index = torch.where(q < s, q, torch.where(q < s + f, cache_width + q - s,
                                              torch.where(q < s + f + c, cache_width + fifo_width + q - s - f,
                                                          width)))
    packed = torch.gather(source, 1, index.unsqueeze(2).expand(-1, -1, dim))
    return packed, spkcache_lengths + fifo_lengths + chunk_lengths


def _take(source, start, count, width):
    """Rows' `source[b, start[b] : start[b] + count[b]]` into `width` frames, zeros after `count`."""
    batch, length, dim = source.shape
    j = torch.arange(width, device=source.device).unsqueeze(0)
    index = (start.unsqueeze(1) + j).clamp(max=length - 1)
    taken = torch.gather(source, 1, index.unsqueeze(2).expand(-1, -1, dim))
    return taken * (j < count.unsqueeze(1)).unsqueeze(2).to(source.dtype)


def _append(head, head_lengths, tail, tail_lengths, width):
    """Rows' `head[:h] + tail[:t]` in `width` frames, zeros after."""
    batch, head_width, dim = head.shape
    source = torch.cat([head, tail, head.new_zeros(batch, 1, dim)], dim=1)
    zero = source.shape[1] - 1
    q = torch.arange(width, device=head.device).unsqueeze(0)
    h, t = head_lengths.unsqueeze(1), tail_lengths.unsqueeze(1)
    index = torch.where(q < h, q, torch.where(q < h + t, head_width + q - h, zero))
    return torch.gather(source, 1, index.unsqueeze(2).expand(-1, -1, dim))


def streaming_update(modules, state: dict, chunk, chunk_lengths, left, preds, chunk_frames: int):
    """NeMo's `streaming_update_async` for all rows at once.

    `state`: spkcache, spkcache_lengths, spkcache_preds, fifo, fifo_lengths, mean_sil_emb,
    n_sil_frames (row per session); `chunk` [B, L, D] pre-encoded frames with `chunk_lengths`
    (left context + chunk + right context); `left` [B] each row's left-context frames; `preds`
    [B, W, n_spk] of the packed sequence. Returns (new state dict, chunk preds [B, chunk_frames, n_spk]).
    """
    spkcache, cache_len = state["spkcache"], state["spkcache_lengths"]
    fifo, fifo_len = state["fifo"], state["fifo_lengths"]
    cache_width, fifo_width, chunk_width = spkcache.shape[1], fifo.shape[1], chunk_frames
    period = modules.spkcache_update_period
    pop_width = min(max(period, chunk_width), chunk_width + fifo_width)

    c = (chunk_lengths - left).clamp(min=0, max=chunk_width)
    fifo_preds = _take(preds, cache_len, fifo_len, fifo_width)  # this step's view of the FIFO
    chunk_preds = _take(preds, cache_len + fifo_len + left, c, chunk_width)
    chunk_embs = _take(chunk, left, c, chunk_width)
    grown = fifo_width + chunk_width
    new_fifo = _append(fifo, fifo_len, chunk_embs, c, grown)
    new_fifo_preds = _append(fifo_preds, fifo_len, chunk_preds, c, grown)

    # the FIFO overflows: its first `pop` frames move to the speaker cache
    overflow = fifo_len + c > fifo_width
    pop = torch.minimum(torch.clamp(chunk_width - fifo_width + fifo_len, min=period), fifo_len + c)
    pop = torch.where(overflow, pop, torch.zeros_like(pop))
    pop_embs, pop_preds = new_fifo[:, :pop_width], new_fifo_preds[:, :pop_width]

    # silence profile of the popped frames (NeMo's `_get_silence_profile`, rows with new silence only)
    in_pop = torch.arange(pop_width, device=chunk.device).unsqueeze(0) < pop.unsqueeze(1)
    silent = (pop_preds.sum(dim=2) < modules.sil_threshold) & in_pop
    count = silent.sum(dim=1)
    n_sil, mean_sil = state["n_sil_frames"], state["mean_sil_emb"]
    total = n_sil + count
    mean = (mean_sil * n_sil.unsqueeze(1) + (pop_embs * silent.unsqueeze(2)).sum(dim=1)) / torch.clamp(
        total.unsqueeze(1), min=1)
    has_silence = count > 0
    mean_sil = torch.where(has_silence.unsqueeze(1), mean, mean_sil)
    n_sil = torch.where(has_silence, total, n_sil)

    # speaker cache + popped frames, and their predictions (NeMo's three cases)
    cache_preds = state["spkcache_preds"]
    grown_cache = cache_len + pop
    first_pred = torch.where(cache_len > 0, cache_preds[:, 0, 0], torch.zeros_like(cache_preds[:, 0, 0]))
    compressed_before = first_pred >= 0
    first_compression = overflow & ~compressed_before & (grown_cache > modules.spkcache_len)
    head_preds = torch.where(first_compression.view(-1, 1, 1), preds[:, :cache_width], cache_preds)
    write_pop = compressed_before | first_compression
    cache_all = _append(spkcache, cache_len, pop_embs, pop, cache_width + pop_width)
    cache_preds_all = _append(head_preds, cache_len, pop_preds, torch.where(write_pop, pop, torch.zeros_like(pop)),
                              cache_width + pop_width)

    new_fifo_len = fifo_len + c - pop
    fifo_out = _take(new_fifo, pop, new_fifo_len, fifo_width)
    fifo_preds_out = _take(new_fifo_preds, pop, new_fifo_len, fifo_width)

    over = (grown_cache > modules.spkcache_len).view(-1, 1, 1)
    squeezed, squeezed_preds, _ = modules._compress_spkcache(
        emb_seq=cache_all, preds=cache_preds_all, mean_sil_emb=mean_sil, permute_spk=False)
    new_state = {
        "spkcache": torch.where(over, squeezed, cache_all[:, : modules.spkcache_len]),
        "spkcache_preds": torch.where(over, squeezed_preds.to(cache_preds_all.dtype),
                                      cache_preds_all[:, : modules.spkcache_len]),
        "spkcache_lengths": grown_cache.clamp(max=modules.spkcache_len),
        "fifo": fifo_out,
        "fifo_preds": fifo_preds_out,
        "fifo_lengths": new_fifo_len,
        "mean_sil_emb": mean_sil,
        "n_sil_frames": n_sil,
    }
    return new_state, chunk_preds


def model_step(model, features, feature_lengths, left, state: dict, chunk_frames: int):
    """`forward_streaming_step` of every row in one call: `features` [B, T, n_mels] (each row's
    left context, chunk and right context from frame 0, zero-padded), `left` [B] left-context
    frames (80 ms) per row. Returns (new state dict, chunk preds [B, chunk_frames, n_spk])."""
    modules = model.sortformer_modules
    embs, lengths = model.encoder.pre_encode(x=features, lengths=feature_lengths)
    lengths = lengths.to(torch.int64)
    packed, packed_lengths = pack_rows(state["spkcache"], state["spkcache_lengths"], state["fifo"],
                                       state["fifo_lengths"], embs, lengths)
    encoded, encoded_lengths = model.frontend_encoder(processed_signal=packed, processed_signal_length=packed_lengths,
                                                      bypass_pre_encode=True)
    preds = model.forward_infer(encoded, encoded_lengths)
    preds = modules.apply_mask_to_preds(preds, encoded_lengths)
    return streaming_update(modules, state, embs, lengths, left, preds, chunk_frames)
