#include "sentencepiece.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "../../modules/sentencepiece/lowmem_sentencepiece.h"
#include "lowmem/core/check.h"

namespace lowmem::text::detail {
namespace {

// The module's functions, listed once: Module's fields and their loading.
// clang-format off
#define LOWMEM_SPM_FUNCTIONS(X)                                      \
  X(abi_version) X(load) X(free) X(piece_size) X(id_to_piece)        \
  X(piece_to_id) X(piece_type) X(special_ids) X(encode)              \
  X(encode_offsets) X(decode) X(train)
// clang-format on

struct Module {
#define LOWMEM_SPM_FIELD(f) decltype(&lowmem_spm_##f) f = nullptr;
  LOWMEM_SPM_FUNCTIONS(LOWMEM_SPM_FIELD)
#undef LOWMEM_SPM_FIELD
  // Whether the module defines every function.
  bool complete() const {
    bool all = true;
#define LOWMEM_SPM_FOUND(f) all = all && f != nullptr;
    LOWMEM_SPM_FUNCTIONS(LOWMEM_SPM_FOUND)
#undef LOWMEM_SPM_FOUND
    return all;
  }
};

// The module, loaded once per process; candidates:
// $LOWMEM_SENTENCEPIECE_MODULE, the build tree's copy, the installed copy.
const Module& module() {
  static std::once_flag once;
  static Module m;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("LOWMEM_SENTENCEPIECE_MODULE")) {
      candidates.emplace_back(env);
    }
#ifdef LOWMEM_SPM_MODULE_BUILD_PATH
    candidates.emplace_back(LOWMEM_SPM_MODULE_BUILD_PATH);
#endif
#ifdef LOWMEM_SPM_MODULE_INSTALL_PATH
    candidates.emplace_back(LOWMEM_SPM_MODULE_INSTALL_PATH);
#endif
    candidates.emplace_back("liblowmem_sentencepiece.so");
    // sentencepiece first, with RTLD_DEEPBIND: it must bind to its own
    // embedded protobuf, not to the system libprotobuf a LibTorch program
    // has in its global scope (else protobuf's version check aborts).
#ifdef LOWMEM_SPM_LIBRARY
    ::dlopen(LOWMEM_SPM_LIBRARY, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
#ifdef LOWMEM_SPM_TRAIN_LIBRARY
    ::dlopen(LOWMEM_SPM_TRAIN_LIBRARY, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
    void* h = nullptr;
    for (const auto& c : candidates) {
      h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h != nullptr) {
        break;
      }
      const char* e = ::dlerror();
      error += "\n  " + c + ": " + (e != nullptr ? e : "not loadable");
    }
    if (h == nullptr) {
      return;
    }
    auto sym = [h](const char* name) { return ::dlsym(h, name); };
#define LOWMEM_SPM_SYM(f) \
  m.f = reinterpret_cast<decltype(m.f)>(sym("lowmem_spm_" #f));
    LOWMEM_SPM_FUNCTIONS(LOWMEM_SPM_SYM)
#undef LOWMEM_SPM_SYM
    if (!m.complete() || m.abi_version() != LOWMEM_SPM_ABI_VERSION) {
      error += "\n  the module found has another interface version";
      m = Module{};
    }
  });
  LOWMEM_CHECK(m.load != nullptr,
               "[text] a sentencepiece tokenizer.model needs lowmem's "
               "sentencepiece module (liblowmem_sentencepiece.so, built when "
               "Debian's libsentencepiece-dev is installed); tried:",
               error);
  return m;
}

}  // namespace

SentencePiece::SentencePiece(const std::string& bytes) {
  const Module& m = module();
  char err[512] = {0};
  model_ = m.load(bytes.data(), bytes.size(), err, sizeof err);
  LOWMEM_CHECK(model_ != nullptr, "[text] not a sentencepiece model: ", err);
  const int n = m.piece_size(model_);
  pieces_.reserve(static_cast<size_t>(n));
  types_.reserve(static_cast<size_t>(n));
  ids_.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    size_t len = 0;
    const char* p = m.id_to_piece(model_, i, &len);
    pieces_.emplace_back(p, len);
    types_.push_back(m.piece_type(model_, i));
    ids_.insert(pieces_.back(), i);
  }
  m.special_ids(model_, &bos, &eos, &pad, &unk);
}

SentencePiece::~SentencePiece() {
  if (model_ != nullptr) {
    module().free(model_);
  }
}

int SentencePiece::find(std::string_view piece) const {
  return ids_.find(piece);
}

void SentencePiece::encode(
    std::string_view text, std::vector<TokenId>& out,
    std::vector<std::pair<size_t, size_t>>* offsets) const {
  char err[512] = {0};
  if (offsets != nullptr) {
    struct Ctx {
      std::vector<TokenId>* ids;
      std::vector<std::pair<size_t, size_t>>* offsets;
    } ctx{&out, offsets};
    const int rc = module().encode_offsets(
        model_, text.data(), text.size(),
        [](void* c, int id, size_t b, size_t e) {
          auto* x = static_cast<Ctx*>(c);
          x->ids->push_back(id);
          x->offsets->emplace_back(b, e);
        },
        &ctx, err, sizeof err);
    LOWMEM_CHECK(rc == 0, "[text] sentencepiece encode failed: ", err);
    return;
  }
  const int rc = module().encode(
      model_, text.data(), text.size(),
      [](void* ctx, const int* ids, size_t n) {
        auto* v = static_cast<std::vector<TokenId>*>(ctx);
        v->insert(v->end(), ids, ids + n);
      },
      &out, err, sizeof err);
  LOWMEM_CHECK(rc == 0, "[text] sentencepiece encode failed: ", err);
}

std::string SentencePiece::decode(const std::vector<int>& ids) const {
  std::string out;
  char err[512] = {0};
  const int rc = module().decode(
      model_, ids.data(), ids.size(),
      [](void* ctx, const char* text, size_t n) {
        static_cast<std::string*>(ctx)->append(text, n);
      },
      &out, err, sizeof err);
  LOWMEM_CHECK(rc == 0, "[text] sentencepiece decode failed: ", err);
  return out;
}

std::string train_sentencepiece_model(
    const std::vector<std::pair<std::string, std::string>>& fields,
    const std::vector<std::string_view>& sentences) {
  std::vector<const char*> keys, values, texts;
  std::vector<size_t> lengths;
  for (const auto& [k, v] : fields) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  for (std::string_view s : sentences) {
    texts.push_back(s.data());
    lengths.push_back(s.size());
  }
  std::string model;
  char err[512] = {0};
  const int rc = module().train(
      keys.data(), values.data(), keys.size(), texts.data(), lengths.data(),
      texts.size(),
      [](void* ctx, const char* bytes, size_t n) {
        static_cast<std::string*>(ctx)->assign(bytes, n);
      },
      &model, err, sizeof err);
  LOWMEM_CHECK(rc == 0, "[text] sentencepiece training failed: ", err);
  return model;
}

}  // namespace lowmem::text::detail
