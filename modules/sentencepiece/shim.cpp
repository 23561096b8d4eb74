// A C interface over Debian's libsentencepiece (0.1.97), built as a separate
// shared module that lowmem's text layer loads with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND), after loading libsentencepiece itself the same way.
// Linking libsentencepiece into a LibTorch program directly crashes at start
// up: sentencepiece embeds protobuf-lite 3.14 and exports its symbols, Debian's
// LibTorch pulls in the system libprotobuf 3.21, and the two copies interpose
// on each other (a segfault in static initialization; without DEEPBIND,
// protobuf's version check aborts). Bound to itself, sentencepiece coexists
// with the system copy. No C++ type or exception crosses this interface.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "lowmem_sentencepiece.h"

struct lowmem_spm {
  sentencepiece::SentencePieceProcessor sp;
};

namespace {

void set_error(char* err, size_t cap, const std::string& msg) {
  if (err == nullptr || cap == 0) return;
  const size_t n = std::min(cap - 1, msg.size());
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// Runs body (returning a sentencepiece status) so that nothing crosses the C
// interface: 0 on success; -1 with the status's text, the exception's or
// "unknown error" in err otherwise.
template <typename Body>
int guarded(char* err, size_t errcap, Body body) {
  try {
    const sentencepiece::util::Status st = body();
    if (st.ok()) return 0;
    set_error(err, errcap, st.ToString());
  } catch (const std::exception& e) {
    set_error(err, errcap, e.what());
  } catch (...) {
    set_error(err, errcap, "unknown error");
  }
  return -1;
}

// Sentences handed over by the caller, one at a time (no copy of the corpus
// beyond sentencepiece's own).
class Sentences final : public sentencepiece::SentenceIterator {
 public:
  Sentences(const char* const* texts, const size_t* lengths, size_t n)
      : texts_(texts), lengths_(lengths), n_(n) {
    load();
  }
  bool done() const override { return i_ >= n_; }
  void Next() override {
    ++i_;
    load();
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override {
    return sentencepiece::util::Status();  // OK
  }

 private:
  void load() {
    if (i_ < n_) value_.assign(texts_[i_], lengths_[i_]);
  }
  const char* const* texts_;
  const size_t* lengths_;
  size_t n_;
  size_t i_ = 0;
  std::string value_;
};

}  // namespace

// Not in the installed headers; exported by libsentencepiece (common.h).
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}

extern "C" {

int lowmem_spm_abi_version(void) {
  return LOWMEM_SPM_ABI_VERSION;
}

lowmem_spm* lowmem_spm_load(const char* bytes, size_t n, char* err, size_t errcap) {
  lowmem_spm* m = nullptr;
  const int rc = guarded(err, errcap, [&] {
    m = new lowmem_spm();
    return m->sp.LoadFromSerializedProto(std::string(bytes, n));
  });
  if (rc == 0) return m;
  delete m;
  return nullptr;
}

void lowmem_spm_free(lowmem_spm* m) {
  delete m;
}

int lowmem_spm_piece_size(const lowmem_spm* m) {
  return m->sp.GetPieceSize();
}

const char* lowmem_spm_id_to_piece(const lowmem_spm* m, int id, size_t* len) {
  const std::string& s = m->sp.IdToPiece(id);
  *len = s.size();
  return s.data();
}

int lowmem_spm_piece_to_id(const lowmem_spm* m, const char* s, size_t n) {
  return m->sp.PieceToId(std::string(s, n));
}

int lowmem_spm_piece_type(const lowmem_spm* m, int id) {
  int t = 0;
  if (m->sp.IsControl(id)) t |= LOWMEM_SPM_CONTROL;
  if (m->sp.IsUnknown(id)) t |= LOWMEM_SPM_UNKNOWN;
  if (m->sp.IsByte(id)) t |= LOWMEM_SPM_BYTE;
  if (m->sp.IsUnused(id)) t |= LOWMEM_SPM_UNUSED;
  return t;
}

void lowmem_spm_special_ids(const lowmem_spm* m, int* bos, int* eos, int* pad, int* unk) {
  *bos = m->sp.bos_id();
  *eos = m->sp.eos_id();
  *pad = m->sp.pad_id();
  *unk = m->sp.unk_id();
}

int lowmem_spm_encode(const lowmem_spm* m, const char* text, size_t n,
                      lowmem_spm_ids_fn emit, void* ctx, char* err, size_t errcap) {
  return guarded(err, errcap, [&] {
    std::vector<int> ids;
    auto st = m->sp.Encode(std::string(text, n), &ids);
    if (st.ok()) emit(ctx, ids.data(), ids.size());
    return st;
  });
}

int lowmem_spm_encode_offsets(const lowmem_spm* m, const char* text, size_t n,
                              lowmem_spm_piece_fn emit, void* ctx, char* err, size_t errcap) {
  return guarded(err, errcap, [&] {
    sentencepiece::ImmutableSentencePieceText spt;
    auto st = m->sp.Encode(std::string(text, n), spt.mutable_proto());
    if (!st.ok()) return st;
    for (size_t i = 0; i < spt.pieces_size(); ++i) {
      const auto p = spt.pieces(static_cast<int>(i));
      emit(ctx, static_cast<int>(p.id()), p.begin(), p.end());
    }
    return st;
  });
}

int lowmem_spm_decode(const lowmem_spm* m, const int* ids, size_t n,
                      lowmem_spm_text_fn emit, void* ctx, char* err, size_t errcap) {
  return guarded(err, errcap, [&] {
    std::string out;
    auto st = m->sp.Decode(std::vector<int>(ids, ids + n), &out);
    if (st.ok()) emit(ctx, out.data(), out.size());
    return st;
  });
}

int lowmem_spm_train(const char* const* keys, const char* const* values,
                     size_t nkv, const char* const* texts, const size_t* lengths,
                     size_t n, lowmem_spm_text_fn emit, void* ctx, char* err,
                     size_t errcap) {
  return guarded(err, errcap, [&] {
    std::unordered_map<std::string, std::string> kwargs;
    for (size_t i = 0; i < nkv; ++i) kwargs[keys[i]] = values[i];
    // The trainer logs its progress at INFO to stderr; a library is silent
    // (failures come back as a status).
    sentencepiece::logging::SetMinLogLevel(100);
    sentencepiece::SetRandomGeneratorSeed(1);
    Sentences sentences(texts, lengths, n);
    std::string model;
    auto st =
        sentencepiece::SentencePieceTrainer::Train(kwargs, &sentences, &model);
    if (st.ok()) emit(ctx, model.data(), model.size());
    return st;
  });
}

}  // extern "C"
