// Counts heap allocations of the whole process while enabled (tests only): this
// target defines malloc and its relatives, forwarding to glibc's implementations.
#ifndef ANVIL_ALLOCATION_COUNTER_H
#define ANVIL_ALLOCATION_COUNTER_H

/// Starts counting from zero.
void anvil_allocations_start(void);
/// Stops counting; returns the allocations made since the start.
long anvil_allocations_stop(void);
/// 1 when allocations are counted; 0 in a sanitizer build, whose runtime owns malloc.
int anvil_allocations_counted(void);

#endif
