#include "lowmem/io/checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "lowmem/core/check.h"
#include "lowmem/core/json.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"
#include "optimizer_state.h"

namespace fs = std::filesystem;

namespace lowmem::io {
namespace detail {
namespace {
void (*g_phase_hook)(const char*) = nullptr;
}  // namespace
void set_checkpoint_phase_hook(void (*hook)(const char* phase)) {
  g_phase_hook = hook;
}
}  // namespace detail

namespace {

constexpr const char* kFormat = "lowmem-checkpoint";
constexpr const char* kManifest = "manifest.json";
constexpr const char* kWeights = "weights.safetensors";
constexpr const char* kRng = "rng.safetensors";
constexpr const char* kInfo = "info.txt";

void phase(const char* name) {
  if (detail::g_phase_hook != nullptr) {
    detail::g_phase_hook(name);
  }
}

void fsync_path(const std::string& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY)
                                             : O_RDONLY);
  LOWMEM_CHECK(fd >= 0, "[checkpoint] cannot open '", p,
               "' to fsync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  LOWMEM_CHECK(rc == 0, "[checkpoint] fsync of '", p,
               "' failed: ", std::strerror(err));
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string optimizer_file(size_t i) {
  return "optimizer-" + std::to_string(i) + ".safetensors";
}

std::string shard_file(size_t i, int64_t rank) {
  return "optimizer-" + std::to_string(i) + ".shard-" + std::to_string(rank) +
         ".safetensors";
}

// Largest world size a sharded manifest may name.
constexpr int64_t kMaxShards = 1 << 20;

// The safetensors metadata key holding an optimizer's archive structure.
constexpr const char* kArchiveKey = "lowmem_optimizer_archive";

void save_optimizer(torch::optim::Optimizer& opt, const std::string& path) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::map<std::string, at::Tensor> tensors;
  const nlohmann::json tree = detail::flatten_archive(archive, tensors);
  save_safetensors(path, tensors,
                   {{"format", kFormat}, {kArchiveKey, tree.dump()}});
}

std::unique_ptr<torch::serialize::InputArchive> read_optimizer(
    const std::string& path, const c10::optional<c10::Device>& device) {
  SafetensorsFile f = load_safetensors(path);
  auto it = f.metadata.find(kArchiveKey);
  LOWMEM_CHECK(it != f.metadata.end(), "[checkpoint] ", quote(path),
               ": no optimizer archive in its metadata");
  JsonLimits limits;
  limits.max_bytes = kMaxSafetensorsHeaderBytes;
  const nlohmann::json tree = parse_json(it->second, path, limits);
  auto archive = std::make_unique<torch::serialize::InputArchive>();
  detail::unflatten_archive(tree, f.tensors, device, path, *archive);
  return archive;
}

struct Manifest {
  int64_t version = 0;
  int64_t step = 0;
  std::map<std::string, int64_t> counters;
  std::vector<std::string> optimizers;
  std::map<std::string, int64_t> files;  // name -> size in bytes
  int64_t shard_world_size = 0;          // 0: unsharded optimizers
  std::vector<int64_t> shard_owners;     // per parameter
};

std::string manifest_json(const Manifest& m) {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["version"] = m.version;
  j["step"] = m.step;
  j["counters"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : m.counters) j["counters"][k] = v;
  j["optimizers"] = m.optimizers;
  j["files"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : m.files) j["files"][k] = v;
  if (m.shard_world_size > 0) {
    j["shards"]["world_size"] = m.shard_world_size;
    j["shards"]["owners"] = m.shard_owners;
  }
  return j.dump(2) + "\n";
}

// Manifests are small (a few hundred bytes per optimizer and file).
constexpr uint64_t kMaxManifestBytes = 1ull << 20;
// info.txt holds the resolved configuration (a few KiB).
constexpr uint64_t kMaxInfoBytes = 1ull << 20;

Manifest parse_manifest(const std::string& text, const std::string& path) {
  using json = nlohmann::json;
  const std::string where = "[checkpoint] " + quote(path);
  JsonLimits limits;
  limits.max_bytes = kMaxManifestBytes;
  limits.reject_duplicate_keys = true;
  json j;
  try {
    j = parse_json(text, path, limits);
  } catch (const c10::Error& e) {
    LOWMEM_CHECK(false, where, ": malformed manifest: ", e.msg());
  }
  LOWMEM_CHECK(j.is_object(), where, ": the manifest is not a JSON object");
  auto need = [&](const char* key,
                  bool (json::*is)() const noexcept) -> const json& {
    auto it = j.find(key);
    LOWMEM_CHECK(it != j.end() && ((*it).*is)(), where,
                 ": missing or mistyped field '", key, "'",
                 it == j.end() ? std::string() : ", got " + clip_json(*it));
    return *it;
  };
  // A count: an integer in [0, 2^62] (json's unsigned and signed both).
  auto count = [&](const json& v, const std::string& what) {
    LOWMEM_CHECK(v.is_number_integer(), where, ": ", what,
                 " is not an integer: ", clip_json(v));
    const bool negative = v.is_number_unsigned() ? false : v.get<int64_t>() < 0;
    LOWMEM_CHECK(!negative && v.get<uint64_t>() <= (uint64_t{1} << 62), where,
                 ": ", what, " is ", clip_json(v),
                 ", must be between 0 and 2^62");
    return v.get<int64_t>();
  };
  const std::string format =
      need("format", &json::is_string).get<std::string>();
  LOWMEM_CHECK(format == kFormat, where, ": format ", quote(format),
               " is not '", kFormat, "'");
  Manifest m;
  m.version = need("version", &json::is_number_integer).get<int64_t>();
  LOWMEM_CHECK(m.version != 1, where,
               ": format version 1 keeps optimizer state in LibTorch pickle "
               "archives, which this build no longer reads (version 2 "
               "stores it as safetensors; docs/checkpoint-format.md)");
  LOWMEM_CHECK(m.version == kCheckpointFormatVersion, where,
               ": format version ", m.version,
               " is not supported (this build reads version ",
               kCheckpointFormatVersion, ")");
  m.step = count(need("step", &json::is_number_integer), "step");
  for (const auto& [k, v] : need("counters", &json::is_object).items()) {
    m.counters[k] = count(v, "counter " + quote(k));
  }
  for (const auto& v : need("optimizers", &json::is_array)) {
    LOWMEM_CHECK(v.is_string(), where,
                 ": optimizer names must be strings, got ", clip_json(v));
    m.optimizers.push_back(v.get<std::string>());
  }
  for (const auto& [k, v] : need("files", &json::is_object).items()) {
    LOWMEM_CHECK(
        k.find('/') == std::string::npos && k != ".." && k != "." && !k.empty(),
        where, ": bad file name ", quote(k));
    m.files[k] = count(v, "file size of " + quote(k));
  }
  auto shards = j.find("shards");
  if (shards != j.end()) {
    LOWMEM_CHECK(shards->is_object(), where, ": 'shards' is not an object");
    auto world = shards->find("world_size");
    auto owners = shards->find("owners");
    LOWMEM_CHECK(
        world != shards->end() && owners != shards->end() && owners->is_array(),
        where, ": 'shards' needs world_size and an owners array");
    m.shard_world_size = count(*world, "shards.world_size");
    LOWMEM_CHECK(m.shard_world_size >= 1 && m.shard_world_size <= kMaxShards,
                 where, ": shards.world_size ", m.shard_world_size,
                 " is not in [1, ", kMaxShards, "]");
    for (const auto& v : *owners) {
      const int64_t o = count(v, "a shard owner");
      LOWMEM_CHECK(o < m.shard_world_size, where, ": shard owner ", o,
                   " is not below shards.world_size ", m.shard_world_size);
      m.shard_owners.push_back(o);
    }
  }
  return m;
}

Manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/" + kManifest;
  return parse_manifest(
      read_file_limited(path, kMaxManifestBytes, "[checkpoint] manifest"),
      path);
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  atomic_write_file(path, bytes);
}

at::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_rng_state(const at::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

int64_t parse_step(const std::string& name) {
  if (name.size() != 13 || name.rfind("step-", 0) != 0) {
    return -1;
  }
  for (size_t i = 5; i < name.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) {
      return -1;
    }
  }
  return std::stoll(name.substr(5));
}

std::string read_latest(const std::string& root) {
  std::string name =
      read_file_limited(root + "/LATEST", 256, "[checkpoint] pointer");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) {
    name.pop_back();
  }
  LOWMEM_CHECK(parse_step(name) >= 0, "[checkpoint] ", root, "/LATEST names ",
               quote(name), ", not a step-<n> directory");
  return name;
}

void cleanup(const std::string& root, const std::string& latest,
             int64_t keep_last, const std::string& own_tmp_prefix) {
  std::vector<std::pair<int64_t, std::string>> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0 || name.rfind(".old-", 0) == 0 ||
        name.rfind(".trash-", 0) == 0) {
      // Stale temporaries of killed saves (ours is already renamed).
      (void)own_tmp_prefix;
      fs::remove_all(entry.path(), ec);
      continue;
    }
    const int64_t s = parse_step(name);
    if (s >= 0 && entry.is_directory()) {
      steps.emplace_back(s, name);
    }
  }
  if (keep_last <= 0) {
    return;
  }
  std::sort(steps.begin(), steps.end());
  const int64_t excess = static_cast<int64_t>(steps.size()) - keep_last;
  for (int64_t i = 0; i < excess; ++i) {
    const std::string& name = steps[static_cast<size_t>(i)].second;
    if (name != latest) {
      // Retired by a rename first, so a crash never leaves a half-deleted
      // step-* directory (a .trash-* one is removed by the next clean-up).
      const fs::path trash = fs::path(root) / (".trash-" + name + "-" +
                                               std::to_string(::getpid()));
      fs::rename(fs::path(root) / name, trash, ec);
      if (!ec) {
        phase("retired");
        fs::remove_all(trash, ec);
      }
    }
  }
}

/// Saves `state`'s optimizers into `tmp` (unsharded) or checks that the
/// workers' shards are there (sharded); records their names in `m`.
void write_optimizers(const std::string& tmp, const CheckpointState& state,
                      Manifest& m) {
  std::set<std::string> names;
  for (size_t i = 0; i < state.optimizers.size(); ++i) {
    const auto& [oname, opt] = state.optimizers[i];
    LOWMEM_CHECK(opt != nullptr, "[checkpoint] optimizer '", oname,
                 "' is null");
    LOWMEM_CHECK(names.insert(oname).second,
                 "[checkpoint] two optimizers "
                 "named '",
                 oname, "'");
    if (state.shard_world_size > 0) {
      for (int64_t r = 0; r < state.shard_world_size; ++r) {
        LOWMEM_CHECK(fs::is_regular_file(tmp + "/" + shard_file(i, r)),
                     "[checkpoint] ", quote(tmp), ": worker ", r,
                     " did not write its shard of optimizer '", oname, "'");
      }
    } else {
      save_optimizer(*opt, tmp + "/" + optimizer_file(i));
    }
    m.optimizers.push_back(oname);
  }
  if (state.shard_world_size > 0) {
    LOWMEM_CHECK(state.shard_world_size <= kMaxShards,
                 "[checkpoint] shard_world_size ", state.shard_world_size,
                 " is over ", kMaxShards);
    for (const int64_t o : state.shard_owners) {
      LOWMEM_CHECK(o >= 0 && o < state.shard_world_size,
                   "[checkpoint] shard owner ", o, " is not in [0, ",
                   state.shard_world_size, ")");
    }
    m.shard_world_size = state.shard_world_size;
    m.shard_owners = state.shard_owners;
  }
}

}  // namespace

std::string sharded_staging_dir(const std::string& root, int64_t step) {
  return root + "/.tmp-" + step_name(step) + "-shards";
}

std::string prepare_sharded_staging(const std::string& root, int64_t step) {
  const std::string dir = sharded_staging_dir(root, step);
  std::error_code ec;
  fs::create_directories(root, ec);
  LOWMEM_CHECK(!ec && fs::is_directory(root), "[checkpoint] cannot create '",
               root, "': ", ec.message());
  fs::remove_all(dir, ec);
  LOWMEM_CHECK(fs::create_directory(dir, ec), "[checkpoint] cannot create '",
               dir, "': ", ec.message());
  return dir;
}

void save_optimizer_shard(const std::string& staging, size_t index,
                          int64_t rank, torch::optim::Optimizer& optimizer) {
  LOWMEM_CHECK(rank >= 0, "[checkpoint] shard rank must be >= 0, got ", rank);
  LOWMEM_CHECK(fs::is_directory(staging), "[checkpoint] no staging directory ",
               quote(staging), " (prepare_sharded_staging first)");
  save_optimizer(optimizer, staging + "/" + shard_file(index, rank));
}

std::string save_checkpoint(
    const std::string& root,
    int64_t step,
    const CheckpointState& state,
    int64_t keep_last) {
  LOWMEM_CHECK(step >= 0, "[checkpoint] step must be >= 0, got ", step);
  LOWMEM_CHECK(!root.empty(), "[checkpoint] empty checkpoint directory");
  std::error_code ec;
  fs::create_directories(root, ec);
  LOWMEM_CHECK(!ec && fs::is_directory(root), "[checkpoint] cannot create '",
               root, "': ", ec.message());
  const std::string name = step_name(step);
  const std::string final_dir = root + "/" + name;
  const bool sharded = state.shard_world_size > 0;
  // A sharded save commits the staging directory the workers wrote into.
  const std::string tmp =
      sharded ? sharded_staging_dir(root, step)
              : root + "/.tmp-" + name + "-" + std::to_string(::getpid());
  if (!sharded) {
    fs::remove_all(tmp, ec);
    LOWMEM_CHECK(fs::create_directory(tmp, ec), "[checkpoint] cannot create '",
                 tmp, "': ", ec.message());
  }
  LOWMEM_CHECK(fs::is_directory(tmp), "[checkpoint] no staging directory ",
               quote(tmp), " (prepare_sharded_staging first)");

  Manifest m;
  m.version = kCheckpointFormatVersion;
  m.step = step;
  m.counters = state.counters;

  std::map<std::string, at::Tensor> weights;
  for (const auto& [key, t] : state.tensors) {
    LOWMEM_CHECK(t.defined(), "[checkpoint] tensor '", key, "' is undefined");
    LOWMEM_CHECK(weights.emplace(key, t.detach()).second,
                 "[checkpoint] two tensors named '", key, "'");
  }
  save_safetensors(tmp + "/" + kWeights, weights, {{"format", kFormat}});
  phase("weights");

  write_optimizers(tmp, state, m);
  phase("optimizers");
  if (state.cpu_rng) {
    save_safetensors(tmp + "/" + kRng, {{"cpu", cpu_rng_state()}});
  }
  write_file_synced(tmp + "/" + kInfo, state.info);
  for (const auto& entry : fs::directory_iterator(tmp)) {
    m.files[entry.path().filename().string()] =
        static_cast<int64_t>(fs::file_size(entry.path()));
  }
  // The manifest is written last: a directory without one is incomplete.
  write_file_synced(tmp + "/" + kManifest, manifest_json(m));
  fsync_path(tmp, /*directory=*/true);
  phase("manifest");

  if (fs::exists(final_dir)) {
    // Re-saving a step: move the old directory aside first. LATEST may name
    // it for a moment while it is missing; load falls back to the newest
    // complete step directory in that case.
    const std::string old = root + "/.old-" + name + "-" +
        std::to_string(::getpid());
    fs::remove_all(old, ec);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fsync_path(root, /*directory=*/true);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir);
    fsync_path(root, /*directory=*/true);
  }
  phase("renamed");
  write_file_synced(root + "/LATEST", name + "\n");
  phase("latest");
  cleanup(root, name, keep_last, tmp);
  return final_dir;
}

namespace {

bool is_complete(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / kManifest);
}

}  // namespace

std::string resolve_checkpoint(const std::string& path) {
  if (is_complete(path)) {
    return path;
  }
  if (fs::is_regular_file(fs::path(path) / "LATEST")) {
    const std::string dir = path + "/" + read_latest(path);
    if (is_complete(dir)) {
      return dir;
    }
    // LATEST can only name a missing directory if a re-save of the same step
    // was interrupted between its two renames; take the newest complete one.
    std::vector<std::pair<int64_t, std::string>> steps;
    for (const auto& entry : fs::directory_iterator(path)) {
      const std::string name = entry.path().filename().string();
      const int64_t s = parse_step(name);
      if (s >= 0 && is_complete(entry.path().string())) {
        steps.emplace_back(s, entry.path().string());
      }
    }
    LOWMEM_CHECK(!steps.empty(), "[checkpoint] ", path,
                 "/LATEST names a missing directory and no complete "
                 "checkpoint exists there");
    return std::max_element(steps.begin(), steps.end())->second;
  }
  LOWMEM_CHECK(false, "[checkpoint] no checkpoint at '", path,
               "' (neither a manifest.json nor a LATEST file)");
  return {};
}

CheckpointLayout read_checkpoint_layout(const std::string& path) {
  CheckpointLayout out;
  out.dir = resolve_checkpoint(path);
  const Manifest m = read_manifest(out.dir);
  out.shard_world_size = m.shard_world_size;
  out.shard_owners = m.shard_owners;
  return out;
}

namespace {

using Archives = std::vector<std::unique_ptr<torch::serialize::InputArchive>>;

/// The optimizer archives to load, by shard (one "shard" when unsharded),
/// each holding one archive per optimizer; validated, nothing loaded yet.
std::vector<Archives> read_optimizer_archives(
    const std::string& dir, const Manifest& m, const CheckpointState& state,
    const c10::optional<c10::Device>& map_to) {
  LOWMEM_CHECK(m.optimizers.size() == state.optimizers.size(), "[checkpoint] ",
               dir, ": holds ", m.optimizers.size(),
               " optimizer(s), the run "
               "has ",
               state.optimizers.size());
  for (size_t i = 0; i < state.optimizers.size(); ++i) {
    LOWMEM_CHECK(m.optimizers[i] == state.optimizers[i].first, "[checkpoint] ",
                 dir, ": optimizer ", i, " is '", m.optimizers[i],
                 "', the run has '", state.optimizers[i].first, "'");
  }
  std::vector<int64_t> shards;
  if (m.shard_world_size == 0) {
    shards = {-1};  // the unsharded files
  } else if (state.load_shards.has_value()) {
    shards = *state.load_shards;
  } else {
    for (int64_t r = 0; r < m.shard_world_size; ++r) shards.push_back(r);
  }
  std::vector<Archives> out;
  for (const int64_t r : shards) {
    LOWMEM_CHECK(r < m.shard_world_size && (r >= 0 || m.shard_world_size == 0),
                 "[checkpoint] ", dir, ": no shard ", r,
                 " (the checkpoint has ", m.shard_world_size, ")");
    Archives a;
    for (size_t i = 0; i < state.optimizers.size(); ++i) {
      // Optimizer state onto the model's device, whatever device wrote it.
      a.push_back(read_optimizer(
          dir + "/" + (r < 0 ? optimizer_file(i) : shard_file(i, r)), map_to));
    }
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

bool has_checkpoint(const std::string& path) {
  return is_complete(path) || fs::is_regular_file(fs::path(path) / "LATEST");
}

std::string load_checkpoint(const std::string& path, CheckpointState& state) {
  const std::string dir = resolve_checkpoint(path);
  const Manifest m = read_manifest(dir);
  for (const auto& [file, size] : m.files) {
    const fs::path p = fs::path(dir) / file;
    std::error_code ec;
    const auto actual = fs::file_size(p, ec);
    LOWMEM_CHECK(!ec, "[checkpoint] ", dir, ": file '", file,
                 "' listed in the manifest is missing");
    LOWMEM_CHECK(static_cast<int64_t>(actual) == size, "[checkpoint] ", dir,
                 ": file '", file, "' has ", actual, " bytes, the manifest "
                 "says ", size);
  }
  // Validate everything before modifying anything.
  SafetensorsFile weights = load_safetensors(dir + "/" + kWeights);
  std::set<std::string> wanted;
  for (const auto& [key, t] : state.tensors) {
    wanted.insert(key);
    auto it = weights.tensors.find(key);
    LOWMEM_CHECK(it != weights.tensors.end(), "[checkpoint] ", dir,
                 ": no tensor '", key, "' in the checkpoint");
    LOWMEM_CHECK(it->second.sizes() == t.sizes(), "[checkpoint] ", dir,
                 ": tensor '", key, "' has shape ", it->second.sizes(),
                 ", the model has ", t.sizes());
    LOWMEM_CHECK(it->second.scalar_type() == t.scalar_type(), "[checkpoint] ",
                 dir, ": tensor '", key, "' has dtype ",
                 it->second.scalar_type(), ", the model has ",
                 t.scalar_type());
  }
  for (const auto& [key, t] : weights.tensors) {
    LOWMEM_CHECK(wanted.count(key) != 0, "[checkpoint] ", dir, ": tensor '",
                 key, "' in the checkpoint is not in the model");
  }
  c10::optional<c10::Device> map_to;
  if (!state.tensors.empty()) {
    map_to = state.tensors.front().second.device();
  }
  const std::vector<Archives> archives =
      read_optimizer_archives(dir, m, state, map_to);
  std::string info =
      read_file_limited(dir + "/" + kInfo, kMaxInfoBytes, "[checkpoint] info");
  at::Tensor rng;
  if (state.cpu_rng) {
    SafetensorsFile r = load_safetensors(dir + "/" + kRng);
    auto it = r.tensors.find("cpu");
    LOWMEM_CHECK(it != r.tensors.end(), "[checkpoint] ", dir,
                 ": no CPU RNG state");
    rng = it->second;
  }

  {
    at::NoGradGuard no_grad;
    for (auto& [key, t] : state.tensors) {
      t.copy_(weights.tensors.at(key));
    }
  }
  for (const auto& shard : archives) {
    for (size_t i = 0; i < state.optimizers.size(); ++i) {
      state.optimizers[i].second->load(*shard[i]);
    }
    if (state.after_shard) state.after_shard();
  }
  if (rng.defined()) {
    set_cpu_rng_state(rng);
  }
  state.counters = m.counters;
  state.counters["step"] = m.step;
  state.info = std::move(info);
  return dir;
}

namespace detail {
void check_manifest(const std::string& text, const std::string& path) {
  parse_manifest(text, path);
}
}  // namespace detail

}  // namespace lowmem::io
