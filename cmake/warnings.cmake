# Warnings for our own targets (torch headers are SYSTEM includes).
function(lowmem_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()
