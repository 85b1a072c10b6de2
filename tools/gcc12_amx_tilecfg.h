/* Force-included (-include) into the llama.cpp build by `make setup-llm-server` and `make setup-llm`.
 *
 * GCC 12's _tile_loadconfig tells the compiler that `ldtilecfg` reads only the first 8 bytes of the
 * 64-byte tile configuration ("m" (*(const void **)cfg)), so the stores of the tile shapes are dead
 * code to it and vanish: llama.cpp's AMX kernels load an empty configuration and die with SIGILL at
 * their first tile instruction on any CPU with AMX (Sapphire Rapids and newer). GCC 13 reads all 64
 * bytes. Here the name points at a copy whose asm operand is the whole 64-byte block.
 */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13 && defined(__AMX_TILE__)
#include <immintrin.h>
static __inline__ __attribute__((__always_inline__)) void mapslib_tile_loadconfig(const void *cfg)
{
    typedef struct { unsigned char bytes[64]; } mapslib_tilecfg;
    __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const mapslib_tilecfg *)cfg));
}
#define _tile_loadconfig mapslib_tile_loadconfig
#endif
