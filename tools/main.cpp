// lowmem command line: dispatches to the subcommands.
#include <cstring>
#include <iostream>

#include "compare_cmd.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "compare") == 0)
    return lowmem_compare_main(argc - 1, argv + 1);
  std::cerr << "usage: lowmem <train|info|compare|merge> [options]\n";
  return 2;
}
