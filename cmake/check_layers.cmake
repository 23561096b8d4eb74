# The layering test: every header and source of a layer may include only the
# headers of its own layer and of the layers its arrows reach (directly or
# through their own arrows). The arrows are the lowmem_add_layer() calls of
# CMakeLists.txt (the single source), written by tests/CMakeLists.txt to
# ARROWS_FILE as lines "layer:dep1,dep2".
#
#   cmake -DSOURCE_DIR=<tree> -DARROWS_FILE=<file> -P cmake/check_layers.cmake
#
# Checked: include/lowmem/<layer>/** and src/<layer>/** (.h, .hpp, .cpp, .cc)
# against #include "lowmem/<x>/..." and <lowmem/<x>/...>; the arrows form no
# cycle and name only declared layers; every folder of include/lowmem/ and
# src/ is a declared layer. tools/, tests/ and bench/ sit on top and may
# include any layer. Exits non-zero, listing every violation, if one is found.
cmake_minimum_required(VERSION 3.18)
if(NOT SOURCE_DIR OR NOT ARROWS_FILE)
  message(FATAL_ERROR "usage: cmake -DSOURCE_DIR=... -DARROWS_FILE=... -P check_layers.cmake")
endif()

file(STRINGS ${ARROWS_FILE} _lines)
set(_layers "")
foreach(_line IN LISTS _lines)
  if(NOT _line MATCHES "^([a-z_0-9]+):(.*)$")
    message(FATAL_ERROR "layers: bad arrow line '${_line}' in ${ARROWS_FILE}")
  endif()
  set(_name ${CMAKE_MATCH_1})
  string(REPLACE "," ";" _deps "${CMAKE_MATCH_2}")
  list(APPEND _layers ${_name})
  set(_deps_${_name} ${_deps})
endforeach()

set(_errors "")
foreach(_l IN LISTS _layers)
  foreach(_d IN LISTS _deps_${_l})
    if(NOT _d IN_LIST _layers)
      list(APPEND _errors "layer ${_l} has an arrow to '${_d}', which is not a layer")
    endif()
  endforeach()
endforeach()

# Reachable layers (transitive closure); a layer reaching itself is a cycle.
foreach(_l IN LISTS _layers)
  set(_seen "")
  set(_todo ${_deps_${_l}})
  while(_todo)
    list(POP_FRONT _todo _x)
    if(_x IN_LIST _seen OR NOT _x IN_LIST _layers)
      continue()
    endif()
    list(APPEND _seen ${_x})
    list(APPEND _todo ${_deps_${_x}})
  endwhile()
  if(_l IN_LIST _seen)
    list(APPEND _errors "the arrows of layer ${_l} lead back to it (a cycle)")
  endif()
  set(_reach_${_l} ${_l} ${_seen})
endforeach()

foreach(_top include/lowmem src)
  file(GLOB _dirs LIST_DIRECTORIES true RELATIVE ${SOURCE_DIR}/${_top}
    ${SOURCE_DIR}/${_top}/*)
  foreach(_d IN LISTS _dirs)
    if(IS_DIRECTORY ${SOURCE_DIR}/${_top}/${_d} AND NOT _d IN_LIST _layers)
      list(APPEND _errors "${_top}/${_d}/ is not a layer (add lowmem_add_layer(${_d} ...) to CMakeLists.txt)")
    endif()
  endforeach()
endforeach()

set(_checked 0)
foreach(_l IN LISTS _layers)
  file(GLOB_RECURSE _files
    ${SOURCE_DIR}/include/lowmem/${_l}/*.h ${SOURCE_DIR}/include/lowmem/${_l}/*.hpp
    ${SOURCE_DIR}/src/${_l}/*.h ${SOURCE_DIR}/src/${_l}/*.hpp
    ${SOURCE_DIR}/src/${_l}/*.cpp ${SOURCE_DIR}/src/${_l}/*.cc)
  foreach(_f IN LISTS _files)
    math(EXPR _checked "${_checked} + 1")
    file(STRINGS ${_f} _incs REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]lowmem/")
    foreach(_inc IN LISTS _incs)
      if(_inc MATCHES "[<\"]lowmem/([^/\">]+)/")
        set(_target ${CMAKE_MATCH_1})
        if(NOT _target IN_LIST _reach_${_l})
          file(RELATIVE_PATH _rel ${SOURCE_DIR} ${_f})
          string(STRIP "${_inc}" _inc)
          string(REPLACE ";" "," _allowed "${_reach_${_l}}")
          list(APPEND _errors
            "${_rel}: '${_inc}': layer ${_l} may include only ${_allowed}")
        endif()
      endif()
    endforeach()
  endforeach()
endforeach()

list(LENGTH _layers _n)
if(_errors)
  list(LENGTH _errors _ne)
  string(REPLACE ";" "\n  " _msg "${_errors}")
  message(FATAL_ERROR "layers: ${_ne} violation(s) of the arrows:\n  ${_msg}")
endif()
message(STATUS "layers: ${_checked} files of ${_n} layers include only what their arrows allow")
