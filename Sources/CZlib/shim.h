#include <zlib.h>

// inflateInit2 is a macro over inflateInit2_; Swift does not import function-like macros.
static inline int czlib_inflate_init(z_stream *stream, int windowBits) {
    return inflateInit2_(stream, windowBits, ZLIB_VERSION, (int)sizeof(z_stream));
}
