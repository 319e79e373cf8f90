// check.cu -- the per-thread message behind a launcher's cudaErrorInvalidValue, and the process-wide
// launch setting (programmatic dependent launch).
#include <atomic>
#include <string>

#include "common.cuh"

namespace {
thread_local std::string g_message;
std::atomic<int> g_programmatic{0};
}

void md::set_check_message(const char* msg) { g_message = msg ? msg : ""; }

extern "C" const char* md_kernels_check_message(void) { return g_message.c_str(); }

extern "C" void md_kernels_set_programmatic_launch(int enable) { g_programmatic.store(enable ? 1 : 0); }

extern "C" int md_kernels_programmatic_launch(void) { return g_programmatic.load(); }
