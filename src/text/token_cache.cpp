#include "lowmem/text/token_cache.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "bounded.h"
#include "lowmem/core/check.h"
#include "lowmem/core/threads.h"
#include "utf8.h"

namespace lowmem::text {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'L', 'M', 'T', 'O', 'K', 'v', '0', '1'};
constexpr size_t kHeaderBytes = 104;
constexpr uint64_t kFlagMask = 1;

void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

std::string errno_text() { return std::strerror(errno); }

void fsync_dir(const fs::path& dir) {
  const int fd =
      ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

// ------------------------------------------------------------ TokenFile

struct TokenFile::Mapping {
  void* base = nullptr;
  size_t length = 0;
  std::string path, key;
  int64_t n = 0, d = 0, vocab = 0;
  const int32_t* tokens = nullptr;
  const uint64_t* offsets =
      nullptr;  // may be unaligned in theory; the format pads
  const uint8_t* mask = nullptr;
  ~Mapping() {
    if (base != nullptr) ::munmap(base, length);
  }
};

TokenFile TokenFile::open(const std::string& path) {
  const std::string where =
      "[text] token file '" + detail::quote_for_error(path) + "'";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LOWMEM_CHECK(fd >= 0, where, ": cannot open: ", errno_text());
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd);
    LOWMEM_CHECK(false, where, ": not a regular file");
  }
  auto m = std::make_shared<Mapping>();
  m->path = path;
  m->length = static_cast<size_t>(st.st_size);
  if (m->length < kHeaderBytes) {
    ::close(fd);
    LOWMEM_CHECK(false, where, ": ", m->length,
                 " bytes, shorter than its header");
  }
  m->base = ::mmap(nullptr, m->length, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m->base == MAP_FAILED) {
    m->base = nullptr;
    LOWMEM_CHECK(false, where, ": mmap failed: ", errno_text());
  }
  const auto* p = static_cast<const unsigned char*>(m->base);
  LOWMEM_CHECK(std::memcmp(p, kMagic, 8) == 0, where,
               ": not a lowmem token file (bad magic)");
  const uint64_t flags = get_u64(p + 8);
  LOWMEM_CHECK((flags & ~kFlagMask) == 0, where, ": unknown flags ", flags);
  m->key.assign(reinterpret_cast<const char*>(p + 16), 64);
  for (char c : m->key) {
    LOWMEM_CHECK((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'), where,
                 ": the key is not 64 hex digits");
  }
  const uint64_t n = get_u64(p + 80), d = get_u64(p + 88),
                 vocab = get_u64(p + 96);
  const uint64_t len = m->length;
  // Sizes checked against the file length before any multiplication can wrap.
  LOWMEM_CHECK(
      n <= len / 4 && d <= len / 8 && vocab > 0 && vocab <= (uint64_t{1} << 31),
      where, ": header counts (", n, " tokens, ", d, " documents, vocabulary ",
      vocab, ") do not fit its ", len, " bytes");
  const uint64_t tokens_end = kHeaderBytes + 4 * n;
  const uint64_t offsets_at = (tokens_end + 7) / 8 * 8;
  const uint64_t offsets_end = offsets_at + 8 * (d + 1);
  const uint64_t expected = offsets_end + ((flags & kFlagMask) ? n : 0);
  LOWMEM_CHECK(expected == len, where, ": ", len,
               " bytes, but its header describes ", expected);
  m->n = static_cast<int64_t>(n);
  m->d = static_cast<int64_t>(d);
  m->vocab = static_cast<int64_t>(vocab);
  m->tokens = reinterpret_cast<const int32_t*>(p + kHeaderBytes);
  m->offsets = reinterpret_cast<const uint64_t*>(p + offsets_at);
  if (flags & kFlagMask) {
    m->mask = p + offsets_end;
  }
  LOWMEM_CHECK(m->offsets[0] == 0 && m->offsets[d] == n, where,
               ": document offsets do not span its tokens");
  for (uint64_t i = 0; i < d; ++i) {
    LOWMEM_CHECK(m->offsets[i] <= m->offsets[i + 1], where,
                 ": document offsets decrease at ", i);
  }
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t t = m->tokens[i];
    LOWMEM_CHECK(t >= 0 && static_cast<uint64_t>(t) < vocab, where, ": token ",
                 i, " = ", t, " is outside the vocabulary of ", vocab);
  }
  TokenFile f;
  f.map_ = std::move(m);
  return f;
}

int64_t TokenFile::size() const { return map_ ? map_->n : 0; }
int64_t TokenFile::documents() const { return map_ ? map_->d : 0; }
int64_t TokenFile::vocab_size() const { return map_ ? map_->vocab : 0; }
const int32_t* TokenFile::tokens() const {
  return map_ ? map_->tokens : nullptr;
}
const uint8_t* TokenFile::mask() const { return map_ ? map_->mask : nullptr; }

const std::string& TokenFile::key() const {
  static const std::string empty;
  return map_ ? map_->key : empty;
}
const std::string& TokenFile::path() const {
  static const std::string empty;
  return map_ ? map_->path : empty;
}

std::pair<int64_t, int64_t> TokenFile::document(int64_t i) const {
  LOWMEM_CHECK(map_ && i >= 0 && i < map_->d, "[text] token file: document ", i,
               " out of range (", documents(), " documents)");
  return {static_cast<int64_t>(map_->offsets[i]),
          static_cast<int64_t>(map_->offsets[i + 1])};
}

at::Tensor TokenFile::tokens_tensor() const {
  LOWMEM_CHECK(map_ != nullptr, "[text] token file: not open");
  auto keep = map_;
  return at::from_blob(
      const_cast<int32_t*>(map_->tokens), {map_->n},
      [keep](void*) mutable { keep.reset(); },
      at::TensorOptions().dtype(at::kInt));
}

at::Tensor TokenFile::mask_tensor() const {
  LOWMEM_CHECK(map_ != nullptr && map_->mask != nullptr, "[text] token file '",
               detail::quote_for_error(path()), "' has no mask");
  auto keep = map_;
  return at::from_blob(
      const_cast<uint8_t*>(map_->mask), {map_->n},
      [keep](void*) mutable { keep.reset(); },
      at::TensorOptions().dtype(at::kByte));
}

// ------------------------------------------------------------ TokenFileWriter

struct TokenFileWriter::State {
  std::string path, key, tmp, mask_tmp;
  int64_t vocab = 0;
  bool with_mask = false;
  std::FILE* f = nullptr;
  std::FILE* mask = nullptr;
  std::vector<uint64_t> offsets{0};
  uint64_t n = 0;
  bool done = false;
};

TokenFileWriter::TokenFileWriter(std::string path, std::string key,
                                 int64_t vocab_size, bool with_mask)
    : s_(std::make_unique<State>()) {
  LOWMEM_CHECK(
      key.size() == 64 && std::all_of(key.begin(), key.end(),
                                      [](char c) {
                                        return (c >= '0' && c <= '9') ||
                                               (c >= 'a' && c <= 'f');
                                      }),
      "[text] token file key must be 64 lowercase hex digits");
  LOWMEM_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 31),
               "[text] token file vocabulary size ", vocab_size,
               " out of range");
  static std::atomic<int> counter{0};
  s_->path = std::move(path);
  s_->key = std::move(key);
  s_->vocab = vocab_size;
  s_->with_mask = with_mask;
  const std::string suffix = ".tmp." + std::to_string(::getpid()) + "." +
                             std::to_string(counter.fetch_add(1));
  s_->tmp = s_->path + suffix;
  s_->f = std::fopen(s_->tmp.c_str(), "wb");
  LOWMEM_CHECK(s_->f != nullptr, "[text] cannot create '",
               detail::quote_for_error(s_->tmp), "': ", errno_text());
  const unsigned char zeros[kHeaderBytes] = {};
  LOWMEM_CHECK(std::fwrite(zeros, 1, kHeaderBytes, s_->f) == kHeaderBytes,
               "[text] writing '", detail::quote_for_error(s_->tmp),
               "' failed");
  if (with_mask) {
    s_->mask_tmp = s_->tmp + ".mask";
    s_->mask = std::fopen(s_->mask_tmp.c_str(), "wb+");
    LOWMEM_CHECK(s_->mask != nullptr, "[text] cannot create '",
                 detail::quote_for_error(s_->mask_tmp), "': ", errno_text());
  }
}

TokenFileWriter::~TokenFileWriter() {
  if (s_->f != nullptr) std::fclose(s_->f);
  if (s_->mask != nullptr) std::fclose(s_->mask);
  if (!s_->done) {
    std::remove(s_->tmp.c_str());
  }
  if (!s_->mask_tmp.empty()) std::remove(s_->mask_tmp.c_str());
}

void TokenFileWriter::add_document(const TokenId* ids, size_t n,
                                   const uint8_t* mask) {
  LOWMEM_CHECK(!s_->done, "[text] token file already finished");
  LOWMEM_CHECK((mask != nullptr) == s_->with_mask || n == 0,
               s_->with_mask
                   ? "[text] this token file needs a mask per document"
                   : "[text] this token file was created without masks");
  for (size_t i = 0; i < n; ++i) {
    LOWMEM_CHECK(ids[i] >= 0 && ids[i] < s_->vocab, "[text] token ", ids[i],
                 " is outside the vocabulary of ", s_->vocab);
  }
  // Little-endian hosts only (x86-64, aarch64): int32 written as is.
  LOWMEM_CHECK(std::fwrite(ids, sizeof(TokenId), n, s_->f) == n,
               "[text] writing '", detail::quote_for_error(s_->tmp),
               "' failed: ", errno_text());
  if (s_->with_mask && n > 0) {
    LOWMEM_CHECK(std::fwrite(mask, 1, n, s_->mask) == n, "[text] writing '",
                 detail::quote_for_error(s_->mask_tmp),
                 "' failed: ", errno_text());
  }
  s_->n += n;
  s_->offsets.push_back(s_->n);
}

TokenFile TokenFileWriter::finish() {
  State& s = *s_;
  LOWMEM_CHECK(!s.done, "[text] token file already finished");
  const std::string where =
      "[text] writing '" + detail::quote_for_error(s.tmp) + "'";
  const uint64_t tokens_end = kHeaderBytes + 4 * s.n;
  const uint64_t pad = (8 - tokens_end % 8) % 8;
  const unsigned char zeros[8] = {};
  LOWMEM_CHECK(std::fwrite(zeros, 1, pad, s.f) == pad, where, " failed");
  for (uint64_t o : s.offsets) {
    unsigned char b[8];
    put_u64(b, o);
    LOWMEM_CHECK(std::fwrite(b, 1, 8, s.f) == 8, where, " failed");
  }
  if (s.with_mask) {
    std::fflush(s.mask);
    std::rewind(s.mask);
    char buf[1 << 16];
    size_t got = 0;
    while ((got = std::fread(buf, 1, sizeof buf, s.mask)) > 0) {
      LOWMEM_CHECK(std::fwrite(buf, 1, got, s.f) == got, where, " failed");
    }
  }
  unsigned char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  put_u64(header + 8, s.with_mask ? kFlagMask : 0);
  std::memcpy(header + 16, s.key.data(), 64);
  put_u64(header + 80, s.n);
  put_u64(header + 88, s.offsets.size() - 1);
  put_u64(header + 96, static_cast<uint64_t>(s.vocab));
  LOWMEM_CHECK(std::fseek(s.f, 0, SEEK_SET) == 0 &&
                   std::fwrite(header, 1, kHeaderBytes, s.f) == kHeaderBytes &&
                   std::fflush(s.f) == 0 && ::fsync(::fileno(s.f)) == 0,
               where, " failed: ", errno_text());
  std::fclose(s.f);
  s.f = nullptr;
  LOWMEM_CHECK(std::rename(s.tmp.c_str(), s.path.c_str()) == 0,
               "[text] renaming '", detail::quote_for_error(s.tmp), "' to '",
               detail::quote_for_error(s.path), "' failed: ", errno_text());
  s.done = true;
  fsync_dir(fs::path(s.path).parent_path());
  return TokenFile::open(s.path);
}

// ------------------------------------------------------------ corpora

std::string default_token_cache_dir() {
  if (const char* d = std::getenv("LOWMEM_CACHE_DIR");
      d != nullptr && *d != '\0') {
    return (fs::path(d) / "tokens").string();
  }
  if (const char* x = std::getenv("XDG_CACHE_HOME");
      x != nullptr && *x != '\0') {
    return (fs::path(x) / "lowmem" / "tokens").string();
  }
  const char* home = std::getenv("HOME");
  return (fs::path(home != nullptr && *home != '\0' ? home : "/tmp") /
          ".cache" / "lowmem" / "tokens")
      .string();
}

std::string corpus_token_key(const Tokenizer& tokenizer,
                             const std::vector<std::string>& files,
                             const CorpusTokenOptions& options) {
  Sha256 h;
  h.update("lowmem-corpus-tokens/1\n");
  h.update(tokenizer.hash());
  h.update(options.add_special_tokens() ? "\n+special\n" : "\n-special\n");
  h.update(std::to_string(options.max_document_bytes()) + "\n");
  for (const auto& f : files) {
    const FileDigest d = sha256_file(f);
    h.update(f);
    h.update(std::string(1, '\0') + std::to_string(d.size) + '\0');
    h.update(d.hex);
  }
  return h.hex();
}

namespace {

// Cuts `text` into documents of at most `max_bytes`, at line ends when a line
// end falls in the second half of the window, else at a UTF-8 boundary.
std::vector<std::string_view> split_documents(std::string_view text,
                                              size_t max_bytes) {
  std::vector<std::string_view> docs;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + max_bytes);
    if (end < text.size()) {
      const size_t nl = text.rfind('\n', end - 1);
      if (nl != std::string_view::npos && nl >= pos + max_bytes / 2) {
        end = nl + 1;
      } else {
        while (end > pos + 1 &&
               (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
          --end;
      }
    }
    docs.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return docs;
}

}  // namespace

TokenFile tokenize_files_cached(const Tokenizer& tokenizer,
                                const std::vector<std::string>& files,
                                const CorpusTokenOptions& options) {
  LOWMEM_CHECK(options.max_document_bytes() >= 1024,
               "[text] max_document_bytes must be >= 1024, got ",
               options.max_document_bytes());
  const std::string dir = options.cache_dir().empty()
                              ? default_token_cache_dir()
                              : options.cache_dir();
  const std::string key = corpus_token_key(tokenizer, files, options);
  const std::string path = (fs::path(dir) / (key + ".tokens")).string();
  if (fs::exists(path)) {
    try {
      TokenFile f = TokenFile::open(path);
      if (f.key() == key && f.vocab_size() == tokenizer.vocab_size()) {
        return f;
      }
    } catch (const c10::Error&) {
      // A damaged cache entry: tokenized again and replaced below.
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  LOWMEM_CHECK(!ec, "[text] cannot create the token cache folder '",
               detail::quote_for_error(dir), "': ", ec.message());
  TokenFileWriter writer(path, key, tokenizer.vocab_size(), false);
  const int workers = std::max(1, std::min(lowmem::hardware_cores(), 8));
  for (const auto& file : files) {
    const std::string text =
        read_file_limited(file, static_cast<uint64_t>(options.max_file_bytes()),
                          "[text] text file");
    const size_t bad = detail::find_invalid_utf8(text);
    LOWMEM_CHECK(bad == std::string::npos, "[text] '",
                 detail::quote_for_error(file), "' is not valid UTF-8 at byte ",
                 bad);
    const auto docs = split_documents(
        text, static_cast<size_t>(options.max_document_bytes()));
    // Documents are encoded in parallel (the tokenizer is thread-safe) and
    // written in order.
    std::vector<std::vector<TokenId>> ids(docs.size());
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&]() {
      for (size_t i = next.fetch_add(1); i < docs.size();
           i = next.fetch_add(1)) {
        try {
          tokenizer.encode_into(docs[i], options.add_special_tokens(), ids[i]);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
      }
    };
    const int n = static_cast<int>(
        std::min<size_t>(static_cast<size_t>(workers), docs.size()));
    std::vector<std::thread> threads;
    for (int t = 1; t < n; ++t) threads.emplace_back(work);
    work();
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
    for (const auto& d : ids) writer.add_document(d);
  }
  return writer.finish();
}

}  // namespace lowmem::text
