# Use ccache when present (Debian package `ccache`); CI passes without it.
# CCACHE_BASEDIR makes the cache keys relative to the source tree, so clones and
# worktrees at different paths share one cache.
find_program(LOWMEM_CCACHE ccache)
if(LOWMEM_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env
      "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      "CCACHE_BASEDIR=${PROJECT_SOURCE_DIR}"
      ${LOWMEM_CCACHE})
endif()
