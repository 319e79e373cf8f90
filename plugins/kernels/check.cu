// check.cu -- the per-thread message behind a launcher's cudaErrorInvalidValue.
#include <string>

#include "common.cuh"

namespace {
thread_local std::string g_message;
}

void md::set_check_message(const char* msg) { g_message = msg ? msg : ""; }

extern "C" const char* md_kernels_check_message(void) { return g_message.c_str(); }
