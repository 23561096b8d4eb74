// The Python side-by-side baseline: the pretrain suite's GPT trained with
// AdamW under Debian's python3-torch. The script is embedded here, written to
// <out>/python_baseline.py (so what ran is on disk) and run as a child.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "compare_internal.h"

namespace lowmem::train::compare::detail {
namespace {

// Mirrors lowmem::models::GPT (pre-LN, fused qkv, GELU tanh, tied head,
// nanoGPT init), TextCorpus (sorted walk, binary files skipped, links read
// once, last 10% = validation) and compare's loop (warm-up + cosine, median
// step time, mean loss over the last 10% of steps, validation on the first
// eval_batches consecutive windows of the validation split). Batches are
// random windows drawn with torch's RNG: same distribution, not the same
// order as the C++ run.
constexpr const char* kScript = R"PY(#!/usr/bin/python3
"""lowmem compare --python-baseline: the pretrain GPT + AdamW in PyTorch."""
import argparse, json, math, os, resource, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.qkv, self.proj, self.H = nn.Linear(C, 3 * C), nn.Linear(C, C), H

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = (t.view(B, T, H, D).transpose(1, 2).reshape(B * H, T, D)
                   for t in self.qkv(x).split(C, dim=2))
        mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu_(1)
        att = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(D))
        y = torch.bmm(F.softmax(att, dim=-1), v).view(B, H, T, D)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(C), Attention(C, H)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = nn.Module()
        self.mlp.fc, self.mlp.proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        h = self.ln_2(x)
        return x + self.mlp.proj(F.gelu(self.mlp.fc(h), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, H, C, T, V=256):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        for n, p in self.named_parameters():
            if n.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if n.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.h:
            x = b(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def corpus(path):
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    seen, chunks = set(), []
    for f in files:
        real = os.path.realpath(f)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        data = open(real, "rb").read()
        if b"\0" in data:
            continue
        chunks.append(data)
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    split = data.numel() - int(data.numel() * 0.1)
    return data[:split].long(), data[split:].long()


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("width", 64), ("layers", 2), ("heads", 4), ("context", 64),
                 ("batch", 16), ("steps", 100), ("eval_batches", 8), ("threads", 0),
                 ("seed", 0)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--text", default="/usr/share/games/fortunes")
    a = ap.parse_args()
    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(a.seed)
    train, val = corpus(a.text)
    T, B = a.context, a.batch
    model = GPT(a.layers, a.heads, a.width, T)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    warm = max(1, a.steps // 10)

    def lr_at(s):
        if s <= warm:
            return a.lr * s / warm
        p = (s - warm) / max(1, a.steps - warm)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    times, losses = [], []
    for s in range(1, a.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        opt.zero_grad(set_to_none=True)
        off = torch.randint(0, train.numel() - T - 1, (B,))
        idx = torch.stack([train[o:o + T] for o in off.tolist()])
        tgt = torch.stack([train[o + 1:o + T + 1] for o in off.tolist()])
        t0 = time.perf_counter()
        logits = model(idx)
        loss = F.cross_entropy(logits.view(-1, 256), tgt.reshape(-1))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    skip = min(3, len(times) // 10)
    med = statistics.median(times[skip:])
    k = max(1, len(losses) // 10)
    model.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(a.eval_batches):
            idx = torch.stack([val[(i * B + j) * T:(i * B + j) * T + T] for j in range(B)])
            tgt = torch.stack([val[(i * B + j) * T + 1:(i * B + j) * T + T + 1] for j in range(B)])
            logits = model(idx)
            tot += F.cross_entropy(logits.view(-1, 256), tgt.reshape(-1), reduction="sum").item()
            cnt += tgt.numel()
    print(json.dumps({
        "torch_version": torch.__version__,
        "step_time_ms": med * 1e3,
        "throughput": B * T / med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "total_params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": sum(losses[-k:]) / k,
        "val_loss": tot / max(1, cnt),
        "steps": a.steps}))


if __name__ == "__main__":
    sys.exit(main())
)PY";

}  // namespace

PythonBaseline run_python_baseline(const CompareOptions& o) {
  namespace fs = std::filesystem;
  PythonBaseline p;
  if (::access(o.python.c_str(), X_OK) != 0) {
    p.reason = "python interpreter '" + o.python +
               "' not found (Debian packages python3, python3-torch)";
    return p;
  }
  fs::create_directories(o.out_dir);
  const std::string script = (fs::path(o.out_dir) / "python_baseline.py").string();
  const std::string log = (fs::path(o.out_dir) / "python_baseline.log").string();
  write_text_file(script, kScript);
  std::vector<std::string> args = {
      o.python, script,
      "--width", std::to_string(o.gpt_width),
      "--layers", std::to_string(o.gpt_layers),
      "--heads", std::to_string(o.gpt_heads),
      "--context", std::to_string(o.gpt_context),
      "--batch", std::to_string(o.gpt_batch),
      "--steps", std::to_string(o.pretrain_steps),
      "--eval_batches", std::to_string(o.eval_batches),
      "--threads", std::to_string(o.threads),
      "--seed", std::to_string(o.seed),
      "--lr", num(o.lr > 0 ? o.lr : pretrain_adamw_lr()),
      "--text", o.text_path};
  int fds[2];
  if (::pipe(fds) != 0) {
    p.status = "failed";
    p.reason = std::string("pipe: ") + std::strerror(errno);
    return p;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 1);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(o.python.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    if (o.stop && o.stop->load()) ::kill(pid, SIGTERM);
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    p.status = "failed";
    p.reason = "python exited abnormally (see python_baseline.log)";
    return p;
  }
  try {
    const auto j = nlohmann::json::parse(out.substr(out.find('{')));
    p.status = "ok";
    p.torch_version = j.at("torch_version");
    p.step_time_ms = j.at("step_time_ms");
    p.throughput = j.at("throughput");
    p.peak_rss_bytes = j.at("peak_rss_bytes");
    p.total_params = j.at("total_params");
    p.final_train_loss = j.at("final_train_loss");
    p.val_loss = j.at("val_loss");
    p.steps = j.at("steps");
  } catch (const std::exception& e) {
    p.status = "failed";
    p.reason = std::string("unreadable python output: ") + e.what();
  }
  return p;
}

}  // namespace lowmem::train::compare::detail
