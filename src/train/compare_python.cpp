// The Python side-by-side baseline (Debian python3-torch).
#include "compare_internal.h"

namespace lowmem::train::compare::detail {

PythonBaseline run_python_baseline(const CompareOptions& options) {
  PythonBaseline p;
  p.status = "skipped";
  p.reason = "the python baseline needs the pretrain GPT (lowmem::models), not in this build yet";
  return p;
}

}  // namespace lowmem::train::compare::detail
