#ifndef ANVIL_FUZZ_DRIVER_H
#define ANVIL_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer's driver (LLVMFuzzerRunDriver) on `argc`/`argv` with `callback` as the
/// target, when the binary was linked with libFuzzer (tools/fuzz); returns -1 without it.
int anvil_fuzz_run(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
