# lowmem_add_layer(<name> <deps...>): one static library per layer folder,
# sources globbed from src/<name>/, public headers in include/lowmem/<name>/.
# The deps are the layer's arrows: the only layers whose headers it may
# include (directly or through their own deps). They are recorded in the
# global property LOWMEM_LAYER_ARROWS ("name:dep1,dep2"), which the `layers`
# test (cmake/check_layers.cmake) checks every #include against: these calls
# are the single source of the arrows.
set(LOWMEM_LAYERS "" CACHE INTERNAL "")
set_property(GLOBAL PROPERTY LOWMEM_LAYER_ARROWS "")
# The flags of library code (layers, the CLI, benchmarks): -march=native with
# LOWMEM_NATIVE, -fno-math-errno for the hot loops' vectorizable sqrt (see
# research/performance.md). No precompiled header: a LibTorch one (570 MB with
# GCC 12) cost 7 s to load per source, more than most sources save (measured
# 2026-12-06: src/core/log.cpp 2.2 s without, 9.2 s with; src/nn/linear.cpp
# 12.4 s without, 11.1 s with).
function(lowmem_library_flags target)
  if(LOWMEM_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  target_compile_options(${target} PRIVATE -fno-math-errno)
endfunction()

function(lowmem_add_layer name)
  string(REPLACE ";" "," _arrow "${ARGN}")
  set_property(GLOBAL APPEND PROPERTY LOWMEM_LAYER_ARROWS "${name}:${_arrow}")
  file(GLOB_RECURSE _src CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${name}/*.cpp)
  set(_t lowmem_${name})
  if(NOT _src)
    add_library(${_t} INTERFACE)
    target_include_directories(${_t} INTERFACE
      $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:include>)
    target_link_libraries(${_t} INTERFACE lowmem_torch)
    foreach(d ${ARGN})
      target_link_libraries(${_t} INTERFACE lowmem_${d})
    endforeach()
  else()
    add_library(${_t} STATIC ${_src})
    target_include_directories(${_t} PUBLIC
      $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:include>)
    target_link_libraries(${_t} PUBLIC lowmem_torch)
    foreach(d ${ARGN})
      target_link_libraries(${_t} PUBLIC lowmem_${d})
    endforeach()
    lowmem_warnings(${_t})
    lowmem_library_flags(${_t})
  endif()
  add_library(lowmem::${name} ALIAS ${_t})
  set_target_properties(${_t} PROPERTIES EXPORT_NAME ${name})
  install(TARGETS ${_t} EXPORT lowmemTargets ARCHIVE DESTINATION lib)
  set(LOWMEM_LAYERS ${LOWMEM_LAYERS} ${_t} CACHE INTERNAL "")
endfunction()

# Optimisation level of the test executables and their shared helpers in
# optimised builds: test code is mostly set-up around calls into the library
# (compiled at the build type's level) and LibTorch, so -O1 costs little run
# time and compiles much faster than -O3. "" keeps the build type's flags.
set(LOWMEM_TESTS_OPT "-O1" CACHE STRING
  "Optimisation flag for tests/ in non-Debug builds (\"\" = build type's)")
function(lowmem_test_flags target)
  if(LOWMEM_TESTS_OPT)
    target_compile_options(${target} PRIVATE
      $<$<NOT:$<CONFIG:Debug>>:${LOWMEM_TESTS_OPT}>)
  endif()
endfunction()

# lowmem_add_test_folder(<folder> <layers...>): one test executable per folder.
function(lowmem_add_test_folder folder)
  file(GLOB _src CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${folder}/*.cpp)
  if(NOT _src)
    return()
  endif()
  set(_t ${folder}_tests)
  add_executable(${_t} ${_src})
  target_link_libraries(${_t} PRIVATE lowmem_testing)
  foreach(d ${ARGN})
    target_link_libraries(${_t} PRIVATE lowmem_${d})
  endforeach()
  lowmem_warnings(${_t})
  lowmem_test_flags(${_t})
  # Same PIC setting as lowmem_testing, whose precompiled header it reuses.
  set_target_properties(${_t} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  if(NOT CMAKE_DISABLE_PRECOMPILE_HEADERS)
    target_precompile_headers(${_t} REUSE_FROM lowmem_testing)
  endif()
  gtest_discover_tests(${_t}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    PROPERTIES ENVIRONMENT "LOWMEM_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
    DISCOVERY_TIMEOUT 120)
  # Tests whose name starts with "Slow" (TEST(Suite, SlowWhatever): over 20 s
  # on 2 cores) get the ctest label `slow`; `ctest -LE slow` skips them.
  # "SlowE2e" ones (the README's own commands end to end) also get `e2e`:
  # scripts/test.sh, the README's test command, runs them after the rest. Run
  # after the discovered list is loaded (TEST_INCLUDE_FILES keep their order).
  set(_labels ${CMAKE_CURRENT_BINARY_DIR}/${_t}_labels.cmake)
  file(WRITE ${_labels}
    "foreach(_n IN LISTS ${_t}_TESTS)\n"
    "  if(_n MATCHES \"[.]SlowE2e\")\n"
    "    set_tests_properties(\"\${_n}\" PROPERTIES LABELS \"slow;e2e\")\n"
    "  elseif(_n MATCHES \"[.]Slow\")\n"
    "    set_tests_properties(\"\${_n}\" PROPERTIES LABELS slow)\n"
    "  endif()\n"
    "endforeach()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_labels})
endfunction()
