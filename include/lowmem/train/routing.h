// Parameter routing: which optimizer updates which parameter. GaLore, SINGD
// and KFAC only apply to weight matrices of linear layers, so a run usually
// pairs them with AdamW for biases, norms and embeddings. Rules are tried in
// order; the first that matches a trainable parameter takes it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace lowmem::train {

struct RouteRule {
  std::string target;          // the optimizer (slot) name this rule feeds
  std::string pattern = ".*";  // ECMAScript regex searched in the param name
  std::string exclude;         // regex; a matching name is never taken
  int64_t min_dim = 0;         // inclusive bounds on param.dim()
  int64_t max_dim = std::numeric_limits<int64_t>::max();
};

/// True when `rule` takes the parameter `name` of shape `param`.
bool matches(const RouteRule& rule, const std::string& name,
             const at::Tensor& param);

/// The parameters one optimizer receives, in the order of `named_params`.
struct Route {
  std::string target;
  std::vector<std::string> names;
  std::vector<at::Tensor> params;
};

/// Routes every parameter with requires_grad to the first matching rule.
/// Returns one Route per distinct target, in order of first appearance among
/// the rules (targets that receive nothing are omitted). Throws naming the
/// parameter when a trainable parameter matches no rule, and on bad regexes.
std::vector<Route> route_parameters(
    const std::vector<std::pair<std::string, at::Tensor>>& named_params,
    const std::vector<RouteRule>& rules);

/// The usual split: 2-D weights of linear layers (names not matching
/// `embedding_pattern`) go to `matrix_target`, everything else to
/// `rest_target`.
std::vector<RouteRule> matrices_and_rest(
    const std::string& matrix_target,
    const std::string& rest_target,
    const std::string& embedding_pattern = "(^|\\.)(wte|wpe|embed[a-z_]*|"
                                           "patch_embed[a-z_.]*|cls_token|"
                                           "pos_embed[a-z_]*)(\\.|$)");

}  // namespace lowmem::train
