// File helpers shared by the test folders: a fresh temporary folder per test
// and reading a whole file.
#pragma once

#include <filesystem>
#include <string>

namespace lowmem::testing {

/// An empty folder `<system temp>/lowmem_<name>_<pid>`, created anew (anything
/// left there by an earlier run is removed first).
std::filesystem::path fresh_temp_dir(const std::string& name);

/// The bytes of the file at `path`; empty if it cannot be opened.
std::string read_file(const std::filesystem::path& path);

}  // namespace lowmem::testing
