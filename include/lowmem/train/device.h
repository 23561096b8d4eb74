// The device a run trains on (`device` key of lowmem train, `--device` of
// lowmem compare): parsed by c10::Device ("cpu", "cuda", "cuda:1", ...) and
// checked against this LibTorch build and machine before any work.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace lowmem::train {

/// The device `text` names, if this build and machine have it; ConfigError
/// naming the value otherwise (unparsable, CUDA in a CPU-only LibTorch, no
/// such GPU, a backend this build lacks, or "meta", which holds no data).
/// Checking a CUDA device initialises CUDA in this process (fork after it at
/// your own risk: lowmem compare checks it in a child).
c10::Device resolve_device(const std::string& text);

/// The same checks without touching any device runtime: parses `text` and
/// rejects device types that cannot train ("meta"). ConfigError naming it.
c10::Device parse_device(const std::string& text);

}  // namespace lowmem::train
