#include "lowmem/interop/hf_checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"

namespace lowmem::interop {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// A read-only private mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    LOWMEM_CHECK(fd_ >= 0, "[hf] cannot open ", path, ": ",
                 std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || st.st_size <= 0) {
      ::close(fd_);
      LOWMEM_CHECK(false, "[hf] cannot map ", path, ": empty or unreadable");
    }
    size_ = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd_);
      LOWMEM_CHECK(false, "[hf] cannot map ", path, ": ", std::strerror(err));
    }
    base_ = static_cast<char*>(p);
  }
  ~MappedFile() {
    ::munmap(base_, size_);
    ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  size_t size() const { return size_; }
  char* at(uint64_t offset) const { return base_ + offset; }
  // Drops the pages of [offset, offset + bytes) from this process (they are
  // clean file pages: a later read would fault them in again).
  void release(uint64_t offset, uint64_t bytes) const {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t begin = offset / page * page;
    const uint64_t end =
        std::min<uint64_t>((offset + bytes + page - 1) / page * page, size_);
    if (end > begin) ::madvise(base_ + begin, end - begin, MADV_DONTNEED);
  }

 private:
  std::string path_;
  int fd_ = -1;
  size_t size_ = 0;
  char* base_ = nullptr;
};

void add_file_entries(const std::string& dir, const std::string& file,
                      std::map<std::string, HfTensorRef>& out,
                      std::map<std::string, std::string>* listed) {
  const std::string path = dir + "/" + file;
  const io::SafetensorsHeader h = io::read_safetensors_header(path);
  for (const auto& e : h.entries) {
    if (listed != nullptr) {
      auto it = listed->find(e.name);
      LOWMEM_CHECK(it != listed->end() && it->second == file, "[hf] tensor ",
                   quote(e.name), " in ", path,
                   " is not listed for that file in ", kIndexFile);
    }
    LOWMEM_CHECK(out.count(e.name) == 0, "[hf] tensor ", quote(e.name),
                 " appears twice in ", dir);
    HfTensorRef r;
    r.file = file;
    r.dtype = e.dtype;
    r.shape = e.shape;
    r.offset = 8 + h.header_bytes + e.begin;
    r.bytes = e.end - e.begin;
    out[e.name] = r;
  }
}

// A shard's file name as the index may give it: a plain name ending in
// .safetensors, of letters, digits, '_', '.' and '-', without "..". Checked
// by hand: libstdc++'s std::regex recurses once per character, so a long
// hostile name could overflow the stack.
bool is_shard_name(const std::string& f) {
  constexpr std::string_view kExt = ".safetensors";
  if (f.size() <= kExt.size() || f.size() > 255 ||
      f.compare(f.size() - kExt.size(), kExt.size(), kExt) != 0 ||
      f.find("..") != std::string::npos) {
    return false;
  }
  return std::all_of(f.begin(), f.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' ||
           ch == '.' || ch == '-';
  });
}

// transformers' _keys_to_ignore_on_load_unexpected: the tied head, and
// model.layers.<digits>.self_attn.rotary_emb.inv_freq.
bool ignored_on_load(const std::string& name, bool tied) {
  if (tied && name == "lm_head.weight") return true;
  constexpr std::string_view kPrefix = "model.layers.";
  constexpr std::string_view kSuffix = ".self_attn.rotary_emb.inv_freq";
  const std::string_view n = name;
  if (n.size() <= kPrefix.size() + kSuffix.size() ||
      n.substr(0, kPrefix.size()) != kPrefix ||
      n.substr(n.size() - kSuffix.size()) != kSuffix) {
    return false;
  }
  const std::string_view digits =
      n.substr(kPrefix.size(), n.size() - kPrefix.size() - kSuffix.size());
  return std::all_of(digits.begin(), digits.end(), [](char ch) {
    return std::isdigit(static_cast<unsigned char>(ch));
  });
}

// Every parameter present with its shape and a readable dtype; nothing else.
void check_against_model(
    const std::map<std::string, HfTensorRef>& index,
    const torch::OrderedDict<std::string, at::Tensor>& params,
    const std::string& dir, bool tied) {
  for (const auto& kv : params) {
    auto it = index.find(kv.key());
    LOWMEM_CHECK(it != index.end(), "[hf] tensor ", quote(kv.key()),
                 " is missing from ", dir, " (the model has it)");
    const HfTensorRef& r = it->second;
    LOWMEM_CHECK(c10::IntArrayRef(r.shape) == kv.value().sizes(),
                 "[hf] tensor ", quote(kv.key()), " in ", dir, "/", r.file,
                 " has shape ", shape_str(r.shape), ", the model expects ",
                 shape_str(kv.value().sizes()));
    const auto t = r.dtype;
    LOWMEM_CHECK(t == c10::kFloat || t == c10::kHalf || t == c10::kBFloat16 ||
                     t == c10::kDouble,
                 "[hf] tensor ", quote(kv.key()), " in ", dir, "/", r.file,
                 " has dtype ", io::safetensors_dtype_name(t),
                 " (readable: F32, F16, BF16, F64)");
  }
  for (const auto& [name, r] : index) {
    LOWMEM_CHECK(params.contains(name) || ignored_on_load(name, tied),
                 "[hf] unexpected tensor ", quote(name), " in ", dir, "/",
                 r.file,
                 " (the model built from config.json has no such parameter)");
  }
}

}  // namespace

std::map<std::string, std::string> parse_hf_weight_map(
    const nlohmann::json& j, const std::string& source) {
  LOWMEM_CHECK(j.is_object() && j.contains("weight_map") &&
                   j.at("weight_map").is_object(),
               "[hf] ", source,
               ": expected an object with a \"weight_map\" object");
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : j.at("weight_map").items()) {
    LOWMEM_CHECK(file.is_string(), "[hf] ", source, ": weight_map[",
                 quote(name), "] is not a file name, got ", clip_json(file));
    const std::string f = file.get<std::string>();
    LOWMEM_CHECK(is_shard_name(f), "[hf] ", source, ": weight_map[",
                 quote(name), "] = ", quote(f),
                 " is not a .safetensors file name in the directory");
    out[name] = f;
  }
  return out;
}

std::map<std::string, HfTensorRef> read_hf_weight_index(
    const std::string& dir) {
  std::map<std::string, HfTensorRef> out;
  if (fs::exists(dir + "/" + kSingleFile)) {  // from_pretrained's order
    add_file_entries(dir, kSingleFile, out, nullptr);
    return out;
  }
  const std::string index = dir + "/" + kIndexFile;
  LOWMEM_CHECK(fs::exists(index), "[hf] ", dir, " has neither ", kSingleFile,
               " nor ", kIndexFile,
               " (pytorch_model.bin is not read: convert it to safetensors)");
  auto listed = parse_hf_weight_map(read_json_file(index), index);
  std::set<std::string> files;
  for (const auto& kv : listed) files.insert(kv.second);
  for (const auto& f : files) add_file_entries(dir, f, out, &listed);
  for (const auto& [name, file] : listed) {
    LOWMEM_CHECK(out.count(name), "[hf] ", index, " lists tensor ", quote(name),
                 " in ", file, ", which does not hold it");
  }
  return out;
}

void load_hf_weights(models::Llama& model, const std::string& dir) {
  const auto index = read_hf_weight_index(dir);
  const auto params = model.named_parameters();
  check_against_model(index, params, dir, model.config().tie_word_embeddings());
  std::map<std::string, std::vector<std::string>> by_file;
  for (const auto& kv : params)
    by_file[index.at(kv.key()).file].push_back(kv.key());
  at::NoGradGuard no_grad;
  for (const auto& [file, names] : by_file) {
    MappedFile map(dir + "/" + file);
    for (const auto& name : names) {
      const HfTensorRef& r = index.at(name);
      LOWMEM_CHECK(r.offset + r.bytes <= map.size(), "[hf] ", dir, "/", file,
                   " changed while it was read");
      at::Tensor src = at::from_blob(map.at(r.offset), r.shape,
                                     at::TensorOptions().dtype(r.dtype));
      params[name].copy_(src);
      map.release(r.offset, r.bytes);
    }
  }
}

std::shared_ptr<models::Llama> load_hf_model(const std::string& dir,
                                             const HfLoadOptions& options,
                                             HfConfig* config) {
  HfConfig c = read_hf_config(dir);
  auto lc = models::LlamaConfig(c.llama)
                .dtype(options.dtype().value_or(c.torch_dtype))
                .device(options.device())
                .activation_checkpointing(options.activation_checkpointing());
  auto model = std::make_shared<models::Llama>(lc);
  load_hf_weights(*model, dir);
  if (config != nullptr) *config = std::move(c);
  return model;
}

namespace {

struct Shard {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  int64_t bytes = 0;
};

int64_t stored_bytes(const at::Tensor& t, c10::ScalarType dtype) {
  return t.numel() * static_cast<int64_t>(c10::elementSize(dtype));
}

// huggingface_hub split_torch_state_dict_into_shards: in order, a new shard
// when the next tensor would overflow; a tensor above the limit alone.
std::vector<Shard> split_shards(
    const torch::OrderedDict<std::string, at::Tensor>& params,
    c10::ScalarType dtype, int64_t max_bytes) {
  std::vector<Shard> shards;
  Shard current;
  for (const auto& kv : params) {
    const int64_t b = stored_bytes(kv.value(), dtype);
    if (b > max_bytes) {
      Shard alone;
      alone.tensors.emplace_back(kv.key(), kv.value());
      alone.bytes = b;
      shards.push_back(std::move(alone));
      continue;
    }
    if (current.bytes + b > max_bytes && !current.tensors.empty()) {
      shards.push_back(std::move(current));
      current = Shard();
    }
    current.tensors.emplace_back(kv.key(), kv.value());
    current.bytes += b;
  }
  if (!current.tensors.empty()) shards.push_back(std::move(current));
  return shards;
}

// One safetensors file, streamed: header, then each tensor converted on its
// own (one tensor's copy in memory at a time).
void write_shard(const std::string& path, const Shard& s,
                 c10::ScalarType dtype) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  const std::string type = io::safetensors_dtype_name(dtype);
  for (const auto& [name, t] : s.tensors) {
    const uint64_t b = static_cast<uint64_t>(stored_bytes(t, dtype));
    header[name] = {{"dtype", type},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + b}}};
    offset += b;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  io::atomic_write_file(path, [&](std::ostream& out) {
    const uint64_t n = text.size();
    char len[8];
    for (int i = 0; i < 8; ++i)
      len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(len, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    at::NoGradGuard no_grad;
    for (const auto& kv : s.tensors) {
      at::Tensor c = kv.second.detach().to(at::kCPU, dtype).contiguous();
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(c.nbytes()));
    }
  });
}

// Weight files of an earlier save that this one did not write.
void remove_stale_weights(const std::string& dir,
                          const std::set<std::string>& kept) {
  static const std::regex kWeights(
      R"(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json)");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, kWeights) && !kept.count(name))
      fs::remove(e.path());
  }
}

}  // namespace

void save_hf_checkpoint(models::Llama& model, const HfConfig& config,
                        const std::string& dir, const HfSaveOptions& options) {
  LOWMEM_CHECK(options.max_shard_size() > 0,
               "[hf] max_shard_size must be > 0, got ",
               options.max_shard_size());
  const auto params = model.named_parameters();
  const auto dtype = options.dtype().value_or(model.embed_tokens.scalar_type());
  io::safetensors_dtype_name(dtype);  // throws for types the format lacks
  HfConfig c = config;
  c.llama = model.config();
  fs::create_directories(dir);
  const auto shards = split_shards(params, dtype, options.max_shard_size());
  std::set<std::string> written;
  json weight_map = json::object();
  int64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1,
                  shards.size());
    const std::string file = shards.size() == 1 ? kSingleFile : name;
    write_shard(dir + "/" + file, shards[i], dtype);
    written.insert(file);
    for (const auto& kv : shards[i].tensors) weight_map[kv.first] = file;
    total += shards[i].bytes;
  }
  if (shards.size() > 1) {
    json index = {{"metadata", {{"total_size", total}}},
                  {"weight_map", weight_map}};
    io::atomic_write_file(dir + "/" + kIndexFile, index.dump(2) + "\n");
    written.insert(kIndexFile);
  }
  remove_stale_weights(dir, written);
  io::atomic_write_file(dir + "/config.json",
                        hf_config_json(c, dtype).dump(2) + "\n");
}

void save_hf_checkpoint(models::Llama& model, const std::string& dir,
                        const HfSaveOptions& options) {
  save_hf_checkpoint(model, hf_config_for(model.config()), dir, options);
}

}  // namespace lowmem::interop
