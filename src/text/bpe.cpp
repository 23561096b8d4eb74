// The BPE model of huggingface/tokenizers (tokenizers/src/models/bpe/model.rs
// merge_word + word.rs merge_all): each character becomes a symbol (its
// vocabulary id, else its bytes' <0xHH> tokens with byte_fallback, else the
// unknown token, fused when fuse_unk), then the pair with the lowest merge
// rank is merged, leftmost first, until no pair has a merge. ignore_merges
// (LLaMA-3) takes a whole word found in the vocabulary as one token. Words
// shorter than 256 bytes are cached per thread, as the crate does.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <queue>

#include "bounded.h"
#include "lowmem/core/check.h"
#include "pipeline.h"
#include "utf8.h"

namespace lowmem::text::detail {

uint64_t hash_bytes(std::string_view s) {
  // FNV-1a over 8-byte words, then a murmur finalizer: fast for short keys.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

void StringIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) {
    cap <<= 1;
  }
  if (cap <= slots_.size()) {
    return;
  }
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  for (const Slot& s : old) {
    if (s.id < 0) {
      continue;
    }
    size_t i = s.hash & mask_;
    while (slots_[i].id >= 0) {
      i = (i + 1) & mask_;
    }
    slots_[i] = s;
  }
}

void StringIdMap::grow() { reserve(std::max<size_t>(16, slots_.size())); }

bool StringIdMap::insert(std::string_view key, TokenId id) {
  if ((count_ + 1) * 2 > slots_.size()) {
    reserve(std::max<size_t>(count_ + 1, slots_.size()));
  }
  const auto h = static_cast<uint32_t>(hash_bytes(key));
  size_t i = h & mask_;
  while (slots_[i].id >= 0) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.length == key.size() &&
        std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
      return false;
    }
    i = (i + 1) & mask_;
  }
  LOWMEM_CHECK(arena_.size() + key.size() < (uint64_t{1} << 32),
               "[text] vocabulary strings exceed 4 GiB");
  slots_[i] = Slot{h, id, static_cast<uint32_t>(arena_.size()),
                   static_cast<uint32_t>(key.size())};
  arena_.append(key.data(), key.size());
  ++count_;
  return true;
}

TokenId StringIdMap::find(std::string_view key) const {
  if (slots_.empty()) {
    return -1;
  }
  const auto h = static_cast<uint32_t>(hash_bytes(key));
  size_t i = h & mask_;
  while (slots_[i].id >= 0) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.length == key.size() &&
        std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
      return s.id;
    }
    i = (i + 1) & mask_;
  }
  return -1;
}

namespace {

std::atomic<uint64_t> next_instance{1};

inline uint64_t pair_key(TokenId a, TokenId b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
         static_cast<uint32_t>(b);
}

inline size_t pair_slot(uint64_t key, size_t mask) {
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

// Per-thread word caches, one per Bpe instance (as the crate's
// BPE_LOCAL_CACHE), filled until they hold kCacheCapacity words.
constexpr size_t kCacheCapacity = 10000;
constexpr size_t kCacheMaxWordBytes = 256;

struct WordCache {
  std::unordered_map<std::string, std::vector<TokenId>> words;
};

WordCache& cache_for(uint64_t instance, bool bytes) {
  thread_local std::unordered_map<uint64_t, WordCache> caches;
  thread_local uint64_t last_key = 0;
  thread_local WordCache* last = nullptr;
  const uint64_t key = instance * 2 + (bytes ? 1 : 0);
  if (last != nullptr && last_key == key) {
    return *last;
  }
  if (caches.size() > 64) {
    caches.clear();  // many short-lived tokenizers on this thread
  }
  last = &caches[key];
  last_key = key;
  return *last;
}

struct Symbol {
  TokenId id;
  int32_t prev, next;
  int32_t len;  // bytes of the word it covers
  bool removed;
};

struct MergeItem {
  uint32_t rank;
  int32_t pos;
  TokenId merged;
  TokenId left, right;  // the pair's ids when queued (staleness check)
  // std::priority_queue is a max-heap: "less" = worse = higher rank, then
  // later position.
  bool operator<(const MergeItem& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

using PendingUnk = std::optional<std::pair<TokenId, size_t>>;

// Appends the pending (fused) unknown token, if any, and clears it.
inline void flush_unk(PendingUnk& unk, std::vector<int32_t>& ids,
                      std::vector<int32_t>& lens) {
  if (unk) {
    ids.push_back(unk->first);
    lens.push_back(static_cast<int32_t>(unk->second));
    unk.reset();
  }
}

// A vocabulary hit: flushes the pending unknown token, then appends `id`.
inline void push_hit(TokenId id, size_t byte_len, PendingUnk& unk,
                     std::vector<int32_t>& ids, std::vector<int32_t>& lens) {
  flush_unk(unk, ids, lens);
  ids.push_back(id);
  lens.push_back(static_cast<int32_t>(byte_len));
}

}  // namespace

Bpe::Bpe(std::vector<std::string> vocab_tokens, std::vector<TokenId> vocab_ids,
         const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options, const TokenizerLimits& limits)
    : options_(std::move(options)), instance_id_(next_instance.fetch_add(1)) {
  LOWMEM_CHECK(static_cast<int64_t>(vocab_tokens.size()) <= limits.max_vocab(),
               "[text] BPE vocabulary of ", vocab_tokens.size(),
               " entries is over the limit of ", limits.max_vocab());
  vocab_.reserve(vocab_tokens.size());
  TokenId max_id = -1;
  for (size_t i = 0; i < vocab_tokens.size(); ++i) {
    const TokenId id = vocab_ids[i];
    LOWMEM_CHECK(id >= 0 && id < limits.max_vocab(), "[text] BPE vocabulary: '",
                 quote_for_error(vocab_tokens[i]), "' has id ", id,
                 ", outside [0, ", limits.max_vocab(), ")");
    LOWMEM_CHECK(vocab_.insert(vocab_tokens[i], id),
                 "[text] BPE vocabulary lists '",
                 quote_for_error(vocab_tokens[i]), "' twice");
    max_id = std::max(max_id, id);
  }
  tokens_.resize(static_cast<size_t>(max_id + 1));
  has_token_.assign(tokens_.size(), false);
  for (size_t i = 0; i < vocab_tokens.size(); ++i) {
    const auto id = static_cast<size_t>(vocab_ids[i]);
    LOWMEM_CHECK(!has_token_[id], "[text] BPE vocabulary gives id ", id,
                 " to both '", quote_for_error(tokens_[id]), "' and '",
                 quote_for_error(vocab_tokens[i]), "'");
    tokens_[id] = std::move(vocab_tokens[i]);
    has_token_[id] = true;
  }

  if (options_.unk_token) {
    unk_id_ = vocab_.find(*options_.unk_token);
  }
  // Single characters of the BMP: a direct table (the initial symbols of
  // every word are looked up there).
  char_ids_.assign(0x10000, -1);
  for (size_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    if (!has_token_[id] || t.empty() || t.size() > 3) continue;
    int len = 0;
    const char32_t c = decode_utf8(t.data(), 0, &len);
    if (static_cast<size_t>(len) == t.size() && c < 0x10000 &&
        vocab_.find(t) == static_cast<TokenId>(id)) {
      char_ids_[c] = static_cast<TokenId>(id);
    }
  }
  for (int b = 0; b < 256; ++b) {
    byte_ids_[static_cast<size_t>(b)] =
        vocab_.find(byte_to_unicode()[static_cast<size_t>(b)]);
    char code[8];
    std::snprintf(code, sizeof code, "<0x%02X>", b);
    fallback_ids_[static_cast<size_t>(b)] = vocab_.find(code);
  }

  // Merges: (left id, right id) -> (rank, merged id); a later duplicate
  // overrides an earlier one, as the crate's HashMap collect does.
  LOWMEM_CHECK(static_cast<int64_t>(merges.size()) <= limits.max_merges(),
               "[text] BPE merges: ", merges.size(),
               " entries is over the limit of ", limits.max_merges());
  size_t cap = 16;
  while (cap < merges.size() * 2 + 2) {
    cap <<= 1;
  }
  merges_.assign(cap, MergeEntry{});
  merge_mask_ = cap - 1;
  const size_t prefix_len = options_.continuing_subword_prefix
                                ? options_.continuing_subword_prefix->size()
                                : 0;
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    const TokenId ia = vocab_.find(a);
    const TokenId ib = vocab_.find(b);
    LOWMEM_CHECK(ia >= 0, "[text] BPE merge ", r, " ('", quote_for_error(a),
                 "' + '", quote_for_error(b), "'): '", quote_for_error(a),
                 "' is not in the vocabulary");
    LOWMEM_CHECK(ib >= 0, "[text] BPE merge ", r, " ('", quote_for_error(a),
                 "' + '", quote_for_error(b), "'): '", quote_for_error(b),
                 "' is not in the vocabulary");
    LOWMEM_CHECK(b.size() >= prefix_len, "[text] BPE merge ", r, ": '",
                 quote_for_error(b),
                 "' is shorter than continuing_subword_prefix");
    joined.assign(a);
    joined.append(b, prefix_len, std::string::npos);
    const TokenId im = vocab_.find(joined);
    LOWMEM_CHECK(im >= 0, "[text] BPE merge ", r, ": the merged token '",
                 quote_for_error(joined), "' is not in the vocabulary");
    const uint64_t key = pair_key(ia, ib);
    size_t i = pair_slot(key, merge_mask_);
    while (merges_[i].key != ~uint64_t{0} && merges_[i].key != key) {
      i = (i + 1) & merge_mask_;
    }
    if (merges_[i].key != key) {
      ++merge_count_;
    }
    merges_[i] = MergeEntry{key, static_cast<uint32_t>(r), im};
  }
}

std::vector<std::pair<std::string, std::string>> Bpe::merges() const {
  std::vector<const MergeEntry*> by_rank;
  by_rank.reserve(merge_count_);
  for (const MergeEntry& e : merges_) {
    if (e.key != ~uint64_t{0}) by_rank.push_back(&e);
  }
  std::sort(by_rank.begin(), by_rank.end(),
            [](const MergeEntry* a, const MergeEntry* b) {
              return a->rank < b->rank;
            });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(by_rank.size());
  for (const MergeEntry* e : by_rank) {
    out.emplace_back(tokens_[static_cast<size_t>(e->key >> 32)],
                     tokens_[static_cast<size_t>(e->key & 0xFFFFFFFFu)]);
  }
  return out;
}

void Bpe::prefetch_merge(TokenId a, TokenId b) const {
  __builtin_prefetch(&merges_[pair_slot(pair_key(a, b), merge_mask_)]);
}

const Bpe::MergeEntry* Bpe::find_merge(TokenId a, TokenId b) const {
  const uint64_t key = pair_key(a, b);
  size_t i = pair_slot(key, merge_mask_);
  while (true) {
    const MergeEntry& e = merges_[i];
    if (e.key == key) {
      return &e;
    }
    if (e.key == ~uint64_t{0}) {
      return nullptr;
    }
    i = (i + 1) & merge_mask_;
  }
}

// One character (with prefix/suffix applied, in `s`; `byte_len` bytes of the
// word) as symbols: merge_word's loop body.
void Bpe::add_symbols(std::string_view s, size_t byte_len,
                      std::vector<int32_t>& ids, std::vector<int32_t>& lens,
                      std::optional<std::pair<TokenId, size_t>>& unk) const {
  const TokenId id = vocab_.find(s);
  if (id >= 0) {
    push_hit(id, byte_len, unk, ids, lens);
    return;
  }
  if (options_.byte_fallback) {
    bool all = true;
    for (char c : s) {
      all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
    }
    if (all) {
      // The crate pushes the pending unknown token only when a vocabulary hit
      // follows; byte tokens do not flush it (model.rs merge_word).
      for (char c : s) {
        ids.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        lens.push_back(1);
      }
      return;
    }
  }
  if (options_.unk_token) {
    LOWMEM_CHECK(unk_id_ >= 0, "[text] BPE unk_token '",
                 quote_for_error(*options_.unk_token),
                 "' is not in the vocabulary");
    if (unk && options_.fuse_unk) {
      unk->second += byte_len;
    } else {
      flush_unk(unk, ids, lens);
      unk = std::make_pair(unk_id_, byte_len);
    }
  }
}

void Bpe::merge_word(std::string_view word, bool bytes,
                     std::vector<TokenId>& out,
                     std::vector<std::pair<uint32_t, uint32_t>>* spans) const {
  thread_local std::vector<int32_t> ids, lens;
  word_symbols(word, bytes, ids, lens);
  merge_symbols(ids, lens, out, spans);
}

// The word's characters (or bytes) as initial symbols: ids and byte lengths,
// unknown runs fused into one unk as the crate does.
void Bpe::word_symbols(std::string_view word, bool bytes,
                       std::vector<int32_t>& ids,
                       std::vector<int32_t>& lens) const {
  thread_local std::string scratch;
  ids.clear();
  lens.clear();
  PendingUnk unk;
  const bool plain =
      !options_.continuing_subword_prefix && !options_.end_of_word_suffix;
  const auto& table = byte_to_unicode();
  size_t i = 0;
  while (i < word.size()) {
    const auto c0 = static_cast<unsigned char>(word[i]);
    const size_t len = bytes ? 1 : static_cast<size_t>(utf8_length(c0));
    const bool first = i == 0;
    const bool last = i + len >= word.size();
    if (bytes && plain && byte_ids_[c0] >= 0) {
      push_hit(byte_ids_[c0], 1, unk, ids, lens);
      i += len;
      continue;
    }
    std::string_view ch =
        bytes ? std::string_view(table[c0]) : word.substr(i, len);
    if (plain && !bytes && len <= 3) {
      int l = 0;
      const char32_t c = decode_utf8(word.data(), i, &l);
      const TokenId id = char_ids_[c];
      if (id >= 0) {
        push_hit(id, len, unk, ids, lens);
        i += len;
        continue;
      }
    }
    if (plain) {
      add_symbols(ch, len, ids, lens, unk);
    } else {
      scratch.clear();
      if (!first && options_.continuing_subword_prefix) {
        scratch += *options_.continuing_subword_prefix;
      }
      scratch.append(ch.data(), ch.size());
      if (last && options_.end_of_word_suffix) {
        scratch += *options_.end_of_word_suffix;
      }
      add_symbols(scratch, len, ids, lens, unk);
    }
    i += len;
  }
  flush_unk(unk, ids, lens);
}

// Applies the merges by rank (lowest first, leftmost on ties) with a heap
// over adjacent pairs, then appends the surviving symbols to `out`.
void Bpe::merge_symbols(
    const std::vector<int32_t>& ids, const std::vector<int32_t>& lens,
    std::vector<TokenId>& out,
    std::vector<std::pair<uint32_t, uint32_t>>* spans) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<MergeItem> heap;
  const auto n = static_cast<int32_t>(ids.size());
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    if (spans != nullptr && n == 1) {
      spans->emplace_back(0, static_cast<uint32_t>(lens[0]));
    }
    return;
  }
  symbols.resize(static_cast<size_t>(n));
  heap.clear();
  for (int32_t k = 0; k < n; ++k) {
    symbols[static_cast<size_t>(k)] =
        Symbol{ids[static_cast<size_t>(k)], k - 1, k + 1 < n ? k + 1 : -1,
               lens[static_cast<size_t>(k)], false};
  }
  // The merge table is large (Gemma-3: 16 MB): prefetch a few pairs ahead so
  // the cache misses overlap.
  constexpr int32_t kAhead = 8;
  for (int32_t k = 0; k + 1 < n && k < kAhead; ++k) {
    prefetch_merge(ids[static_cast<size_t>(k)],
                   ids[static_cast<size_t>(k + 1)]);
  }
  for (int32_t k = 0; k + 1 < n; ++k) {
    if (k + kAhead + 1 < n) {
      prefetch_merge(ids[static_cast<size_t>(k + kAhead)],
                     ids[static_cast<size_t>(k + kAhead + 1)]);
    }
    if (const MergeEntry* m = find_merge(ids[static_cast<size_t>(k)],
                                         ids[static_cast<size_t>(k + 1)])) {
      heap.push_back(MergeItem{m->rank, k, m->merged,
                               ids[static_cast<size_t>(k)],
                               ids[static_cast<size_t>(k + 1)]});
    }
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const MergeItem top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (left.removed || left.next < 0) {
      continue;
    }
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    // A stale entry: the pair at this position changed since it was queued
    // (the crate looks the pair up again; equal ids mean the same merge).
    if (left.id != top.left || right.id != top.right) {
      continue;
    }
    left.id = top.merged;
    left.len += right.len;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) {
      symbols[static_cast<size_t>(right.next)].prev = top.pos;
    }
    if (left.prev >= 0 && left.next >= 0) {
      prefetch_merge(symbols[static_cast<size_t>(left.prev)].id, left.id);
      prefetch_merge(left.id, symbols[static_cast<size_t>(left.next)].id);
    }
    if (left.prev >= 0) {
      const Symbol& prev = symbols[static_cast<size_t>(left.prev)];
      if (const MergeEntry* pm = find_merge(prev.id, left.id)) {
        heap.push_back(
            MergeItem{pm->rank, left.prev, pm->merged, prev.id, left.id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (left.next >= 0) {
      const Symbol& next = symbols[static_cast<size_t>(left.next)];
      if (const MergeEntry* nm = find_merge(left.id, next.id)) {
        heap.push_back(
            MergeItem{nm->rank, top.pos, nm->merged, left.id, next.id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  uint32_t at = 0;
  for (int32_t k = 0; k >= 0; k = symbols[static_cast<size_t>(k)].next) {
    out.push_back(symbols[static_cast<size_t>(k)].id);
    if (spans != nullptr) {
      const auto len =
          static_cast<uint32_t>(symbols[static_cast<size_t>(k)].len);
      spans->emplace_back(at, at + len);
      at += len;
    }
  }
}

void Bpe::tokenize(const Piece& piece, std::vector<TokenId>& out,
                   std::vector<std::pair<uint32_t, uint32_t>>* spans) const {
  const std::string& word = piece.text;
  if (word.empty()) {
    return;
  }
  if (options_.ignore_merges) {
    const TokenId id =
        piece.bytes ? vocab_.find(byte_level_map(word)) : vocab_.find(word);
    if (id >= 0) {
      out.push_back(id);
      if (spans != nullptr) {
        spans->emplace_back(0, static_cast<uint32_t>(word.size()));
      }
      return;
    }
  }
  if (word.size() >= kCacheMaxWordBytes || spans != nullptr) {
    merge_word(word, piece.bytes, out, spans);
    return;
  }
  WordCache& cache = cache_for(instance_id_, piece.bytes);
  auto it = cache.words.find(word);
  if (it != cache.words.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  const size_t before = out.size();
  merge_word(word, piece.bytes, out, nullptr);
  if (cache.words.size() < kCacheCapacity) {
    cache.words.emplace(
        word,
        std::vector<TokenId>(out.begin() + static_cast<std::ptrdiff_t>(before),
                             out.end()));
  }
}

}  // namespace lowmem::text::detail
