// The HIP prelude of kernels.cu (hiprtc, which brings the HIP device functions without
// an include): the wavefront width (64 on CDNA, 32 on RDNA), shuffles over the whole
// wavefront, IEEE half conversions through clang's _Float16.
//
// The width: the device's, when the host passes it (-DLLMD_WARP=N from its warpSize);
// else the compiler's macro for the architecture (deprecated in ROCm 6.3, gone in 7.2);
// else HIP's warpSize, a run-time value in ROCm 7 (WARP is only used in arithmetic,
// never in #if).
#if defined(LLMD_WARP)
#define WARP LLMD_WARP
#elif defined(__AMDGCN_WAVEFRONT_SIZE)
#define WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define WARP warpSize
#endif

__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor(v, o); }

__device__ __forceinline__ float half_bits_to_f32(unsigned short b) {
    return (float)__builtin_bit_cast(_Float16, b);
}

__device__ __forceinline__ unsigned short f32_to_half_bits(float x) {
    return __builtin_bit_cast(unsigned short, (_Float16)x);
}
