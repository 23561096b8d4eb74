#include "dist_testing.h"

#include <stdlib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "lowmem/adapters/lora.h"
#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/dist/low_rank.h"
#include "lowmem/dist/shard.h"
#include "lowmem/nn/linear.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"

namespace lowmem::dist::testing {

data::Batch RegressionSource::next() {
  auto gen = at::detail::createCPUGenerator(seed_ * 1000003ULL + pos_);
  ++pos_;
  data::Batch b;
  b.input = at::randn({batch_, 8}, gen);
  // A fixed nonlinear target so the loss keeps moving.
  b.target = at::sin(b.input.narrow(1, 0, 4) * 2.0) +
      0.1 * at::randn({batch_, 4}, gen);
  return b;
}

std::string RunConfig::get(const std::string& k, const std::string& def) const {
  auto it = kv.find(k);
  return it == kv.end() ? def : it->second;
}
int64_t RunConfig::get_int(const std::string& k, int64_t def) const {
  auto it = kv.find(k);
  return it == kv.end() ? def : std::stoll(it->second);
}
double RunConfig::get_double(const std::string& k, double def) const {
  auto it = kv.find(k);
  return it == kv.end() ? def : std::stod(it->second);
}
std::string RunConfig::encode() const {
  std::string s;
  for (const auto& [k, v] : kv) {
    s += k + "=" + v + ";";
  }
  return s;
}
RunConfig RunConfig::decode(const std::string& s) {
  RunConfig c;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ';')) {
    const auto eq = item.find('=');
    if (eq != std::string::npos) {
      c.kv[item.substr(0, eq)] = item.substr(eq + 1);
    }
  }
  return c;
}

namespace {

torch::nn::Sequential make_model(int64_t width) {
  torch::manual_seed(0);
  return torch::nn::Sequential(
      torch::nn::Linear(8, 2 * width),
      torch::nn::Tanh(),
      torch::nn::Linear(2 * width, width),
      torch::nn::Tanh(),
      torch::nn::Linear(width, 4));
}

// The same network from lowmem LinearLike layers, each wrapped in LoRA
// (rank 2, Gaussian A, B = 0); only the adapters train.
torch::nn::Sequential make_lora_model(int64_t width) {
  torch::manual_seed(0);
  torch::nn::Sequential seq;
  const std::vector<std::pair<int64_t, int64_t>> dims = {
      {8, 2 * width}, {2 * width, width}, {width, 4}};
  for (size_t i = 0; i < dims.size(); ++i) {
    auto base =
        std::make_shared<lowmem::nn::Linear>(dims[i].first, dims[i].second);
    for (auto& p : base->parameters()) {
      p.set_requires_grad(false);
    }
    seq->push_back(std::make_shared<lowmem::adapters::LoraLinear>(
        base,
        lowmem::adapters::LoraOptions(2).lora_alpha(4).init_lora_weights(
            "gaussian")));
    if (i + 1 < dims.size()) {
      seq->push_back(torch::nn::Tanh());
    }
  }
  return seq;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::string& name,
    std::vector<at::Tensor> params,
    const RunConfig& cfg) {
  if (name == "came") {
    return std::make_unique<lowmem::optim::CAME>(
        params, lowmem::optim::CameOptions(1e-2).weight_decay(0.01));
  }
  if (name == "galore") {
    std::vector<at::Tensor> projected;
    std::vector<at::Tensor> plain;
    for (const auto& p : params) {
      (p.dim() == 2 ? projected : plain).push_back(p);
    }
    return std::make_unique<lowmem::optim::GaLore>(
        projected,
        plain,
        [](std::vector<torch::optim::OptimizerParamGroup> g) {
          return std::make_unique<lowmem::optim::GaLoreAdamW>(
              std::move(g), lowmem::optim::GaLoreAdamWOptions(1e-2));
        },
        lowmem::optim::GaLoreOptions().projector(
            lowmem::projection::ProjectorOptions()
                .rank(cfg.get_int("rank_r", 4))
                .update_proj_gap(cfg.get_int("gap", 3))
                .proj_type("std")));
  }
  if (name == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(1e-2).weight_decay(0.01));
  }
  if (name == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(0.1).momentum(0.9));
  }
  throw std::runtime_error("unknown optim " + name);
}

void save_checkpoint(
    const std::string& dir,
    torch::nn::Sequential& model,
    torch::optim::Optimizer& opt,
    int64_t step,
    int64_t data_pos) {
  torch::save(model, dir + "/model.pt");
  torch::save(opt, dir + "/optim.pt");
  torch::save(std::vector<at::Tensor>{at::tensor({step, data_pos})},
              dir + "/meta.pt");
}

}  // namespace

RunResult run_training(Communicator& comm, const RunConfig& cfg) {
  const int64_t steps = cfg.get_int("steps", 5);
  const int64_t batch = cfg.get_int("batch", 8);
  const std::string sync_kind = cfg.get("sync", "full");
  auto model = cfg.get("model", "mlp") == "lora"
      ? make_lora_model(cfg.get_int("width", 16))
      : make_model(cfg.get_int("width", 16));
  std::vector<at::Tensor> params;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) {
      params.push_back(p);
    }
  }
  auto opt = make_optimizer(cfg.get("optim", "adamw"), params, cfg);
  auto source = std::make_shared<ShardedSource>(
      std::make_shared<RegressionSource>(batch, 7),
      comm.rank(),
      comm.world_size());
  int64_t start = 0;
  const std::string resume = cfg.get("resume", "");
  if (!resume.empty()) {
    torch::load(model, resume + "/model.pt");
    torch::load(*opt, resume + "/optim.pt");
    std::vector<at::Tensor> meta;
    torch::load(meta, resume + "/meta.pt");
    start = meta[0][0].item<int64_t>();
    source->seek(meta[0][1].item<int64_t>());
  }
  std::unique_ptr<GradSync> sync;
  if (sync_kind == "full") {
    sync = std::make_unique<GradSync>(
        std::shared_ptr<Communicator>(&comm, [](Communicator*) {}),
        params,
        GradSyncOptions()
            .overlap(cfg.get_int("overlap", 1) != 0)
            .bucket_cap_mb(cfg.get_double("bucket_mb", 25.0)));
  }
  std::unique_ptr<LowRankGradSync> low_rank;
  if (sync_kind.rfind("lowrank", 0) == 0) {
    auto o = LowRankSyncOptions()
                 .rank(cfg.get_int("rank_r", 4))
                 .update_proj_gap(cfg.get_int("gap", 3))
                 .seed(11)
                 .mode(sync_kind == "lowrank_per_worker"
                           ? ProjectionMode::kPerWorker
                           : ProjectionMode::kShared);
    if (sync_kind == "lowrank_galore") {
      auto* g = dynamic_cast<lowmem::optim::GaLore*>(opt.get());
      std::vector<at::Tensor> projected;
      for (const auto& p : params) {
        if (p.dim() == 2) {
          projected.push_back(p);
        }
      }
      o.basis_provider(galore_basis_provider(*g, projected));
    }
    low_rank = std::make_unique<LowRankGradSync>(
        std::shared_ptr<Communicator>(&comm, [](Communicator*) {}), params, o);
    low_rank->set_step(start);
  }
  const int64_t check_every = cfg.get_int("check_every", 1);
  int64_t bytes_total = 0;
  RunResult res;
  std::vector<double> losses;
  std::vector<double> global;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = start; step < steps; ++step) {
    if (step == cfg.get_int("die_at", -1) &&
        comm.rank() == cfg.get_int("die_rank", -1)) {
      std::_Exit(3);  // a crash: no cleanup, sockets closed by the kernel
    }
    if (step == cfg.get_int("hang_at", -1) &&
        comm.rank() == cfg.get_int("hang_rank", -1)) {
      std::this_thread::sleep_for(std::chrono::seconds(60));
    }
    auto b = source->next();
    opt->zero_grad();
    auto loss = torch::mse_loss(model->forward(b.input), b.target);
    loss.backward();
    if (sync) {
      sync->synchronize();
      res.bytes_per_step = sync->bytes_last_step();
      res.early_buckets = sync->buckets_launched_early_last_step();
    }
    if (low_rank) {
      low_rank->synchronize();
      res.bytes_per_step = low_rank->bytes_last_step();
    }
    bytes_total += res.bytes_per_step;
    opt->step();
    losses.push_back(loss.item<double>());
    auto l = loss.detach().clone().reshape({1});
    comm.allreduce_mean({l});
    global.push_back(l.item<double>());
    if (step == cfg.get_int("corrupt_at", -1) &&
        comm.rank() == cfg.get_int("corrupt_rank", -1)) {
      torch::NoGradGuard ng;
      params[0].view(-1)[0] += 1e-3;
    }
    if (check_every > 0 && (step + 1) % check_every == 0 &&
        sync_kind != "none") {
      // Per-worker projections give each rank its own optimizer inputs only
      // before the combination; weights and state still agree.
      check_identical(comm, params, opt.get());
    }
    if (step + 1 == cfg.get_int("save_at", -1)) {
      const std::string dir = cfg.get("ckpt", "");
      run_on_main(
          comm,
          [&] { save_checkpoint(dir, model, *opt, step + 1, source->position()); },
          "write checkpoint " + dir);
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  const int64_t done = steps - start;
  res.seconds_per_step = done > 0
      ? std::chrono::duration<double>(t1 - t0).count() / static_cast<double>(done)
      : 0;
  for (const auto& p : params) {
    res.params.push_back(p.detach().clone());
  }
  res.bytes_total = bytes_total;
  res.losses = at::tensor(losses, at::kDouble);
  res.global_loss = at::tensor(global, at::kDouble);
  return res;
}

void save_result(const RunResult& r, const std::string& path) {
  std::vector<at::Tensor> v = r.params;
  v.push_back(r.losses);
  v.push_back(r.global_loss);
  v.push_back(at::tensor(
      {static_cast<double>(r.bytes_per_step),
       static_cast<double>(r.early_buckets),
       r.seconds_per_step,
       static_cast<double>(r.bytes_total)},
      at::kDouble));
  torch::save(v, path);
}

RunResult load_result(const std::string& path) {
  std::vector<at::Tensor> v;
  torch::load(v, path);
  RunResult r;
  const auto stats = v.back();
  v.pop_back();
  r.global_loss = v.back();
  v.pop_back();
  r.losses = v.back();
  v.pop_back();
  r.params = v;
  r.bytes_per_step = static_cast<int64_t>(stats[0].item<double>());
  r.early_buckets = static_cast<int64_t>(stats[1].item<double>());
  r.seconds_per_step = stats[2].item<double>();
  r.bytes_total = static_cast<int64_t>(stats[3].item<double>());
  return r;
}

std::vector<std::string> run_thread_ranks(
    int n, const std::function<void(std::shared_ptr<Communicator>)>& fn,
    double timeout_s) {
  const int port = find_free_port();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        DistEnv env;
        env.rank = r;
        env.world_size = n;
        env.local_rank = r;
        env.master_port = port;
        fn(Communicator::init(env, InitOptions().timeout_s(timeout_s)));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  return errors;
}

std::string temp_dir() {
  char tmpl[] = "/tmp/lowmem_dist_XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  if (d == nullptr) {
    throw std::runtime_error("mkdtemp failed");
  }
  return d;
}

LaunchResult launch_workers(
    int n,
    const RunConfig& cfg,
    std::string* log,
    double kill_grace_s) {
  LaunchOptions o;
  o.nproc_per_node(n).kill_grace_s(kill_grace_s).env(
      {{"LOWMEM_TEST_CONFIG", cfg.encode()}});
  return launch_local(
      {self_executable(),
       "--gtest_filter=DistWorker.DISABLED_Train",
       "--gtest_also_run_disabled_tests",
       "--gtest_brief=1"},
      o,
      [log](int rank, bool, const std::string& line) {
        if (log != nullptr) {
          *log += "[rank " + std::to_string(rank) + "] " + line + "\n";
        }
      });
}

}  // namespace lowmem::dist::testing
