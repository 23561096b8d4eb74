// Checking that a call fails with one clear message.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <string>

namespace lowmem::testing {

/// Runs `fn`, which must throw c10::Error with `needle` in its message.
template <class F>
void expect_error_containing(F&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace lowmem::testing
