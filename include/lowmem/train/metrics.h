// Metrics as JSON Lines: one object per Progress event, appended and flushed
// line by line so a killed run keeps every line written before.
#pragma once

#include <fstream>
#include <string>

#include "lowmem/train/trainer.h"

namespace lowmem::train {

/// One JSON object (no trailing newline), e.g.
/// {"event":"step","step":10,"loss":2.31,"lr":0.001,...}. Non-finite numbers
/// are written as null.
std::string to_json(const Progress& p);

class JsonlWriter {
 public:
  /// Opens `path` for appending (creating it); throws naming the path.
  explicit JsonlWriter(const std::string& path);
  void write(const Progress& p);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace lowmem::train
