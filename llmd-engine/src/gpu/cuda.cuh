// The CUDA prelude of kernels.cu (NVRTC, no headers): warps of 32, shuffles with a full
// mask, IEEE half conversions through PTX.
#define WARP 32

__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }

__device__ __forceinline__ float half_bits_to_f32(unsigned short b) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
    return f;
}

__device__ __forceinline__ unsigned short f32_to_half_bits(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
