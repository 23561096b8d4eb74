// Checking that a call fails with one clear message.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <string>

#include "lowmem/core/fields.h"

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

/// Runs `fn`, which must throw c10::Error whose message (without the
/// backtrace) is exactly `message`.
template <class F>
void expect_error_is(F&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected the error '" << message << "'";
  } catch (const c10::Error& e) {
    EXPECT_EQ(e.what_without_backtrace(), message);
  }
}

/// Runs `fn`, which must throw ConfigError (a usage error: a bad key or
/// value) with `needle` in its message.
template <class F>
void expect_config_error(F&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected a ConfigError containing '" << needle << "'";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << e.what();
  }
}

/// Runs `fn`, which must throw ConfigError whose message is exactly `message`.
template <class F>
void expect_config_error_is(F&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected the ConfigError '" << message << "'";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

/// Runs `fn`, which must throw c10::Error with `needle` in a message of at
/// most `max_bytes` bytes (no value echoed whole: core/input.h's quote/clip).
template <class F>
void expect_short_error(F&& fn, const std::string& needle,
                        size_t max_bytes = 1500) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg.substr(0, 2000);
    EXPECT_LE(msg.size(), max_bytes) << msg.substr(0, 2000);
  }
}

/// `n` nested arrays: "[[[...]]]" (a few hundred thousand crashed readers
/// that formatted the value into a message).
inline std::string deep_json(size_t n) {
  return std::string(n, '[') + std::string(n, ']');
}

}  // namespace lowmem::testing
