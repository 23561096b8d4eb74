// Added tokens (huggingface/tokenizers tokenizers/src/tokenizer/
// added_vocabulary.rs find_matches): leftmost-longest, non-overlapping
// matches (the crate's daachorse automaton with MatchKind::LeftmostLongest);
// a single_word token only counts with no word character (regex crate \w)
// on either side; lstrip/rstrip take the whitespace (\s) next to the token
// into it.
#include <unicode/uchar.h>

#include <algorithm>

#include "pipeline.h"
#include "utf8.h"

namespace lowmem::text::detail {
namespace {

// The regex crate's Unicode \w (UTS #18 Annex C).
bool is_word_char(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
  }
  const auto u = static_cast<UChar32>(c);
  const int32_t mask = U_GET_GC_MASK(u);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) ||
         (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL);
}

}  // namespace

void AddedMatcher::build(
    const std::vector<std::pair<std::string, int>>& patterns) {
  nodes_.assign(1, NodeT{});
  first_.fill(false);
  for (const auto& [text, token] : patterns) {
    if (text.empty()) {
      continue;
    }
    int node = 0;
    for (char ch : text) {
      const auto c = static_cast<unsigned char>(ch);
      auto& next = nodes_[static_cast<size_t>(node)].next;
      auto it = std::lower_bound(next.begin(), next.end(), c,
                                 [](const std::pair<unsigned char, int>& e,
                                    unsigned char v) { return e.first < v; });
      if (it != next.end() && it->first == c) {
        node = it->second;
      } else {
        const int created = static_cast<int>(nodes_.size());
        next.insert(it, {c, created});
        nodes_.push_back(NodeT{});
        node = created;
      }
    }
    // The first pattern with this content wins (ids are unique per content
    // in a valid file; a duplicate keeps the earlier entry).
    if (nodes_[static_cast<size_t>(node)].token < 0) {
      nodes_[static_cast<size_t>(node)].token = token;
    }
    first_[static_cast<unsigned char>(text[0])] = true;
  }
}

void AddedMatcher::split(std::string_view s,
                         const std::vector<AddedToken>& tokens,
                         bool skip_special, std::vector<Split>& out) const {
  out.clear();
  size_t start_offset = 0;
  size_t i = 0;
  const size_t n = s.size();
  while (i < n && !empty()) {
    if (!first_[static_cast<unsigned char>(s[i])]) {
      ++i;
      continue;
    }
    // Longest pattern starting at i.
    int node = 0;
    int best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < n; ++j) {
      const auto c = static_cast<unsigned char>(s[j]);
      const auto& next = nodes_[static_cast<size_t>(node)].next;
      auto it = std::lower_bound(next.begin(), next.end(), c,
                                 [](const std::pair<unsigned char, int>& e,
                                    unsigned char v) { return e.first < v; });
      if (it == next.end() || it->first != c) {
        break;
      }
      node = it->second;
      if (nodes_[static_cast<size_t>(node)].token >= 0) {
        best = nodes_[static_cast<size_t>(node)].token;
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    size_t start = i;
    size_t stop = best_end;
    i = best_end;  // the automaton resumes after this match in any case
    const AddedToken& t = tokens[static_cast<size_t>(best)];
    if (skip_special && t.special) {
      continue;
    }
    if (t.single_word) {
      bool start_space = true, stop_space = true;
      if (start > 0) {
        int len = 0;
        const size_t p = previous_char(s.data(), start);
        start_space = !is_word_char(decode_utf8(s.data(), p, &len));
      }
      if (stop < n) {
        int len = 0;
        stop_space = !is_word_char(decode_utf8(s.data(), stop, &len));
      }
      if (!start_space || !stop_space) {
        continue;
      }
    }
    if (t.lstrip) {
      size_t newstart = start;
      while (newstart > 0) {
        const size_t p = previous_char(s.data(), newstart);
        int len = 0;
        if (!is_white_space(decode_utf8(s.data(), p, &len))) {
          break;
        }
        newstart = p;
      }
      start = std::max(newstart, start_offset);
    }
    if (t.rstrip) {
      while (stop < n) {
        int len = 0;
        if (!is_white_space(decode_utf8(s.data(), stop, &len))) {
          break;
        }
        stop += static_cast<size_t>(len);
      }
      i = std::max(i, stop);
    }
    if (start_offset < start) {
      out.push_back(Split{start_offset, start, -1});
    }
    out.push_back(Split{start, stop, best});
    start_offset = stop;
  }
  if (start_offset != n) {
    out.push_back(Split{start_offset, n, -1});
  }
}

}  // namespace lowmem::text::detail
