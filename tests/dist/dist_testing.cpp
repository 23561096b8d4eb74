#include "dist_testing.h"

#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/dist/shard.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include <stdlib.h>
#include <unistd.h>

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

torch::nn::Sequential make_model() {
  torch::manual_seed(0);
  return torch::nn::Sequential(
      torch::nn::Linear(8, 32),
      torch::nn::Tanh(),
      torch::nn::Linear(32, 16),
      torch::nn::Tanh(),
      torch::nn::Linear(16, 4));
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::string& name,
    std::vector<at::Tensor> params) {
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
  auto model = make_model();
  std::vector<at::Tensor> params = model->parameters();
  auto opt = make_optimizer(cfg.get("optim", "adamw"), params);
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
  const int64_t check_every = cfg.get_int("check_every", 1);
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
       r.seconds_per_step},
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
  return r;
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
