#ifndef SENSORLOG_CRC32C_H
#define SENSORLOG_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) of `length` bytes, continuing from `crc`
/// (pass 0 to start). Uses the SSE4.2 `crc32` instruction when the CPU has it, a table otherwise.
uint32_t sensorlog_crc32c(uint32_t crc, const void *bytes, size_t length);

/// The same checksum, always computed with the portable table (for tests of the hardware path).
uint32_t sensorlog_crc32c_portable(uint32_t crc, const void *bytes, size_t length);

/// 1 when `sensorlog_crc32c` uses the SSE4.2 instruction on this CPU.
int sensorlog_crc32c_hardware(void);

#endif
