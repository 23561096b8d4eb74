// lowmem command line (placeholder until the CLI issue lands: prints usage).
#include <iostream>
int main(int argc, char** argv) {
  std::cerr << "usage: lowmem <train|info|compare|merge> [options]\n";
  return 2;
}
