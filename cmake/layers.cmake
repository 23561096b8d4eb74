# lowmem_add_layer(<name> <deps...>): one static library per layer folder,
# sources globbed from src/<name>/, public headers in include/lowmem/<name>/.
set(LOWMEM_LAYERS "" CACHE INTERNAL "")
function(lowmem_add_layer name)
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
    if(LOWMEM_NATIVE)
      target_compile_options(${_t} PRIVATE -march=native)
    endif()
    # Hot loops: vectorizable sqrt (see research/performance.md).
    target_compile_options(${_t} PRIVATE -fno-math-errno)
  endif()
  add_library(lowmem::${name} ALIAS ${_t})
  set_target_properties(${_t} PROPERTIES EXPORT_NAME ${name})
  install(TARGETS ${_t} EXPORT lowmemTargets ARCHIVE DESTINATION lib)
  set(LOWMEM_LAYERS ${LOWMEM_LAYERS} ${_t} CACHE INTERNAL "")
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
  # Same PIC setting as lowmem_testing, whose precompiled header it reuses.
  set_target_properties(${_t} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  if(NOT CMAKE_DISABLE_PRECOMPILE_HEADERS)
    target_precompile_headers(${_t} REUSE_FROM lowmem_testing)
  endif()
  # Test suites whose name ends in "Slow" (e.g. HfParitySlow.*) get the ctest
  # label `slow`: `ctest -LE slow` is the default run.
  gtest_discover_tests(${_t}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    TEST_FILTER "-*Slow.*"
    PROPERTIES ENVIRONMENT "LOWMEM_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
    DISCOVERY_TIMEOUT 120)
  gtest_discover_tests(${_t}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    TEST_FILTER "*Slow.*"
    TEST_LIST ${_t}_SLOW_TESTS
    PROPERTIES ENVIRONMENT "LOWMEM_SOURCE_DIR=${PROJECT_SOURCE_DIR}" LABELS slow TIMEOUT 1800
    DISCOVERY_TIMEOUT 120)
endfunction()
