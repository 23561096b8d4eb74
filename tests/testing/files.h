// File helpers shared by the test folders: a fresh temporary folder per test,
// reading a whole file, a small text corpus.
#pragma once

#include <filesystem>
#include <string>

namespace lowmem::testing {

/// An empty folder `<system temp>/lowmem_<name>_<pid>`, created anew (anything
/// left there by an earlier run is removed first).
std::filesystem::path fresh_temp_dir(const std::string& name);

/// The bytes of the file at `path`; empty if it cannot be opened.
std::string read_file(const std::filesystem::path& path);

/// Writes `<dir>/corpus.txt`, 400 short lines of our own (no dependency on
/// Debian's fortunes, absent on the GPU machines); returns its path.
std::string write_corpus(const std::filesystem::path& dir);

}  // namespace lowmem::testing
