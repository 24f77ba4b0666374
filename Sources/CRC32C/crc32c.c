#include "crc32c.h"
#include <string.h>

// Slicing-by-8 table for CPUs without SSE4.2 (and for checking the hardware path in tests).
static uint32_t table[8][256];
static int table_ready = 0;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t sensorlog_crc32c_portable(uint32_t crc, const void *bytes, size_t length) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();  // idempotent: a race rebuilds equal values
    const uint8_t *p = bytes;
    crc = ~crc;
    while (length >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = table[7][w & 0xFF] ^ table[6][(w >> 8) & 0xFF] ^ table[5][(w >> 16) & 0xFF] ^
              table[4][(w >> 24) & 0xFF] ^ table[3][(w >> 32) & 0xFF] ^ table[2][(w >> 40) & 0xFF] ^
              table[1][(w >> 48) & 0xFF] ^ table[0][w >> 56];
        p += 8;
        length -= 8;
    }
    while (length--) crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *bytes, size_t length) {
    const uint8_t *p = bytes;
    uint64_t c = ~crc;
    // Three independent streams hide the instruction's 3-cycle latency on large buffers.
    if (length >= 3 * 1024) {
        size_t lane = (length / 3) & ~(size_t)7;
        uint64_t c1 = 0, c2 = 0;
        const uint8_t *p1 = p + lane, *p2 = p + 2 * lane;
        for (size_t i = 0; i < lane; i += 8) {
            uint64_t a, b, d;
            memcpy(&a, p + i, 8); memcpy(&b, p1 + i, 8); memcpy(&d, p2 + i, 8);
            c = __builtin_ia32_crc32di(c, a);
            c1 = __builtin_ia32_crc32di(c1, b);
            c2 = __builtin_ia32_crc32di(c2, d);
        }
        // Combine by shifting the earlier lanes' CRCs over the later lanes' bytes: done here by
        // re-feeding zero-extended state is not linear-free, so fold with the portable shift below.
        // crc(A||B) = shift(crc(A), |B|) ^ crc'(B) where crc' starts from 0 (no pre/post inversion).
        extern uint32_t sensorlog_crc32c_shift(uint32_t crc, size_t length);
        uint32_t r = (uint32_t)c;
        r = sensorlog_crc32c_shift(r, lane) ^ (uint32_t)c1;
        r = sensorlog_crc32c_shift(r, lane) ^ (uint32_t)c2;
        c = r;
        p += 3 * lane;
        length -= 3 * lane;
    }
    while (length >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        length -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (length--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

// Multiplies `crc` by x^(8*length) mod P: what feeding `length` zero bytes does to a raw CRC
// register. Square-and-multiply over GF(2), O(log length); used to join the parallel lanes.
static uint32_t gf2_multiply(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (int i = 0; i < 32; i++) {
        if (b & 0x80000000u) product ^= a;
        b <<= 1;
        a = (a & 1) ? (a >> 1) ^ 0x82F63B78u : a >> 1;
    }
    return product;
}

uint32_t sensorlog_crc32c_shift(uint32_t crc, size_t length) {
    // x^8 in reflected representation is 0x00800000; x^(8*2^k) by repeated squaring.
    uint32_t power = 0x00800000u;
    uint32_t result = 0x80000000u;  // the polynomial 1
    size_t n = length;
    while (n) {
        if (n & 1) result = gf2_multiply(result, power);
        power = gf2_multiply(power, power);
        n >>= 1;
    }
    return gf2_multiply(crc, result);
}

int sensorlog_crc32c_hardware(void) {
#if defined(__x86_64__)
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    return 0;
#endif
}

uint32_t sensorlog_crc32c(uint32_t crc, const void *bytes, size_t length) {
#if defined(__x86_64__)
    static int hardware = -1;
    int h = __atomic_load_n(&hardware, __ATOMIC_RELAXED);
    if (h < 0) {
        h = sensorlog_crc32c_hardware();
        __atomic_store_n(&hardware, h, __ATOMIC_RELAXED);
    }
    if (h) return crc32c_sse42(crc, bytes, length);
#endif
    return sensorlog_crc32c_portable(crc, bytes, length);
}
