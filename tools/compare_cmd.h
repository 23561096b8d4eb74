// `lowmem compare` subcommand entry point (tools/compare_cmd.cpp).
#pragma once

/// argv[0] is "compare" (or the program name); returns the exit code.
int lowmem_compare_main(int argc, char** argv);
