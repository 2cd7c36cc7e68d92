// The HIP prelude of kernels.cu (hiprtc, which brings the HIP device functions without
// an include): the wavefront width of the architecture compiled for (64 on CDNA, 32 on
// RDNA), shuffles over the whole wavefront, IEEE half conversions through clang's
// _Float16.
#if defined(__AMDGCN_WAVEFRONT_SIZE__)
#define WARP __AMDGCN_WAVEFRONT_SIZE__
#elif defined(__AMDGCN_WAVEFRONT_SIZE)
#define WARP __AMDGCN_WAVEFRONT_SIZE
#else
#error "the compiler does not say the wavefront size"
#endif

__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor(v, o); }

__device__ __forceinline__ float half_bits_to_f32(unsigned short b) {
    return (float)__builtin_bit_cast(_Float16, b);
}

__device__ __forceinline__ unsigned short f32_to_half_bits(float x) {
    return __builtin_bit_cast(unsigned short, (_Float16)x);
}
