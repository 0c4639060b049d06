#include "fuzz_driver.h"

// Weak: a normal build links without libFuzzer and the symbol stays null; tools/fuzz links
// libclang_rt.fuzzer_no_main and forces the symbol in with -u.
extern int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size)) __attribute__((weak));

int anvil_fuzz_run(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size)) {
    if (!LLVMFuzzerRunDriver) return -1;
    return LLVMFuzzerRunDriver(argc, argv, callback);
}
