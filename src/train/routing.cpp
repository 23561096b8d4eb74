#include "lowmem/train/routing.h"

#include <regex>

#include "lowmem/core/check.h"

namespace lowmem::train {
namespace {

std::regex compile(const std::string& pattern) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    LOWMEM_CHECK(
        false, "[routing] bad regex '", pattern, "': ", e.what());
  }
  return {};
}

}  // namespace

bool matches(const RouteRule& rule, const std::string& name,
             const at::Tensor& param) {
  const int64_t d = param.dim();
  if (d < rule.min_dim || d > rule.max_dim) {
    return false;
  }
  if (!std::regex_search(name, compile(rule.pattern))) {
    return false;
  }
  return rule.exclude.empty() ||
      !std::regex_search(name, compile(rule.exclude));
}

std::vector<Route> route_parameters(
    const std::vector<std::pair<std::string, at::Tensor>>& named_params,
    const std::vector<RouteRule>& rules) {
  LOWMEM_CHECK(!rules.empty(), "[routing] no routing rules given");
  std::vector<Route> routes;
  auto route_for = [&](const std::string& target) -> Route& {
    for (auto& r : routes) {
      if (r.target == target) {
        return r;
      }
    }
    routes.push_back(Route{target, {}, {}});
    return routes.back();
  };
  // Fix the output order: targets in order of first appearance in the rules.
  for (const auto& rule : rules) {
    compile(rule.pattern);
    if (!rule.exclude.empty()) {
      compile(rule.exclude);
    }
    route_for(rule.target);
  }
  for (const auto& [name, p] : named_params) {
    if (!p.requires_grad()) {
      continue;
    }
    bool taken = false;
    for (const auto& rule : rules) {
      if (matches(rule, name, p)) {
        Route& r = route_for(rule.target);
        r.names.push_back(name);
        r.params.push_back(p);
        taken = true;
        break;
      }
    }
    LOWMEM_CHECK(
        taken,
        "[routing] trainable parameter '", name, "' (dim ", p.dim(),
        ") matches no routing rule");
  }
  std::vector<Route> used;
  for (auto& r : routes) {
    if (!r.params.empty()) {
      used.push_back(std::move(r));
    }
  }
  return used;
}

std::vector<RouteRule> matrices_and_rest(
    const std::string& matrix_target,
    const std::string& rest_target,
    const std::string& embedding_pattern) {
  RouteRule matrices;
  matrices.target = matrix_target;
  matrices.exclude = embedding_pattern;
  matrices.min_dim = 2;
  matrices.max_dim = 2;
  RouteRule rest;
  rest.target = rest_target;
  return {matrices, rest};
}

}  // namespace lowmem::train
