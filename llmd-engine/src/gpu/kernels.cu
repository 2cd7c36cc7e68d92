// llmd's GPU kernels: one source for NVIDIA and AMD, compiled at start (NVRTC for CUDA,
// hiprtc for ROCm), so no toolkit is needed to build llmd and no header is included. A
// short per-vendor prelude comes first (cuda.cuh, hip.cuh): the warp width `WARP`, a
// warp shuffle `shfl_xor`, and IEEE half <-> f32 conversions. The CPU engine is the
// reference each kernel is tested against (llmd-engine/src/cuda/tests.rs).
//
// Conventions:
// - activations and accumulation in f32; weights and the KV cache in f16, bf16 or f32
//   (one instantiation per storage type, suffixed _f16 / _bf16 / _f32);
// - the KV cache of one layer is K and V buffers of [slots, kv_heads, head_dim], slot =
//   block * block_size + offset, as the CPU cache (`PagedKvCache`) lays it out;
// - RoPE is the "rotate half" layout Llama checkpoints use, with cos/sin tables computed
//   on the host by the same code as the CPU runner (every scaling it supports);
// - thread blocks are multiples of WARP (32 on NVIDIA and RDNA, 64 on CDNA).

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long usize;

#define NEG_INF __int_as_float(0xff800000)

// ---- storage types ----------------------------------------------------------------

struct f16 { u16 bits; };
struct bf16 { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16 x) { return half_bits_to_f32(x.bits); }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

__device__ __forceinline__ void from_f32(float x, float* out) { *out = x; }
__device__ __forceinline__ void from_f32(float x, f16* out) { out->bits = f32_to_half_bits(x); }
__device__ __forceinline__ void from_f32(float x, bf16* out) {
    // Round to nearest even, NaN kept a NaN (as half's f32 -> bf16 conversion).
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out->bits = (u16)((u >> 16) | 0x40u);
        return;
    }
    u32 rounded = u + 0x7fffu + ((u >> 16) & 1u);
    out->bits = (u16)(rounded >> 16);
}

// ---- reductions ---------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += shfl_xor(v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, shfl_xor(v, o));
    return v;
}

// Sum over the thread block (blockDim.x a multiple of WARP, at most 1024); every thread
// gets the result. `scratch` holds 32 floats (one per warp, at most 1024 / 32).
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = blockDim.x / WARP;
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = blockDim.x / WARP;
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// ---- per-token kernels --------------------------------------------------------------

// out[t, :] = table[ids[t], :]; one thread block per token.
template <typename T>
__device__ void embedding(const T* table, const u32* ids, float* out, int hidden) {
    int t = blockIdx.x;
    const T* row = table + (usize)ids[t] * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[(usize)t * hidden + i] = to_f32(row[i]);
}

// out[t, :] = x[t, :] / rms(x[t, :]) * weight; one thread block per row. The output
// type is what the next GEMM reads.
template <typename W, typename O>
__device__ void rms_norm(const float* x, const W* weight, O* out, int hidden, float eps) {
    __shared__ float scratch[32];
    int t = blockIdx.x;
    const float* row = x + (usize)t * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += row[i] * row[i];
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        from_f32(row[i] * inv * to_f32(weight[i]), &out[(usize)t * hidden + i]);
    }
}

// x[t, h, :] rotated in place for heads 0..heads, "rotate half" layout: pairs (i,
// i + half). cos/sin: [tokens, half], scale applied. One thread block per token.
__device__ void rope(float* x, const float* cos, const float* sin, int heads, int head_dim) {
    int t = blockIdx.x, half = head_dim / 2;
    const float* c = cos + (usize)t * half;
    const float* s = sin + (usize)t * half;
    float* row = x + (usize)t * heads * head_dim;
    for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float* v = row + h * head_dim;
        float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
    }
}

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]: the fused gate/up GEMM's
// output halves. Grid-stride over tokens * inter.
template <typename O>
__device__ void silu_mul(const float* gate_up, O* out, int tokens, int inter) {
    usize n = (usize)tokens * inter;
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        usize t = k / inter, i = k % inter;
        float g = gate_up[t * 2 * inter + i], u = gate_up[t * 2 * inter + inter + i];
        from_f32(g / (1.0f + __expf(-g)) * u, &out[k]);
    }
}

// x += y, elementwise (the residual stream).
__device__ void add_inplace(float* x, const float* y, usize n) {
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        x[k] += y[k];
    }
}

// Stores each token's keys and values at its cache slot. k, v: [tokens, kv_heads *
// head_dim] f32; slots: [tokens]. One thread block per token.
template <typename T>
__device__ void write_kv(const float* k, const float* v, const u32* slots, T* k_cache, T* v_cache, int slot_len) {
    int t = blockIdx.x;
    usize dst = (usize)slots[t] * slot_len, src = (usize)t * slot_len;
    for (int i = threadIdx.x; i < slot_len; i += blockDim.x) {
        from_f32(k[src + i], &k_cache[dst + i]);
        from_f32(v[src + i], &v_cache[dst + i]);
    }
}

// ---- paged attention ----------------------------------------------------------------

// Positions scored at a time (shared memory), and the most head-dim elements each thread
// accumulates (head_dim <= ATTN_THREADS * MAX_DIMS_PER_THREAD).
#define ATTN_CHUNK 256
#define ATTN_THREADS 128
#define MAX_DIMS_PER_THREAD 4

// One thread block (ATTN_THREADS threads) per (query token, query head). The query at
// `pos[q]` attends to its sequence's positions window_start[q]..=pos[q], read through
// its block table (tables + table_start[q]); out: [queries, heads, head_dim]. Softmax
// is online (running max and sum, the accumulator rescaled chunk by chunk), so memory
// does not grow with the context. The same call serves decode (one query per
// sequence), prefill over a cached prefix and chunked prefill (a causal run of queries
// per sequence).
template <typename T>
__device__ void paged_attention(const float* q, const T* k_cache, const T* v_cache, const u32* tables,
                                const u32* table_start, const u32* pos, const u32* window_start, float* out,
                                int heads, int kv_heads, int head_dim, int block_size, float scale) {
    __shared__ float scratch[32];
    __shared__ float s[ATTN_CHUNK];
    extern __shared__ float q_row[];  // head_dim floats
    int qi = blockIdx.x / heads, h = blockIdx.x % heads;
    int kh = h / (heads / kv_heads);
    int slot_len = kv_heads * head_dim;
    const u32* table = tables + table_start[qi];
    int first = window_start[qi], n = pos[qi] + 1 - first;
    const float* qv = q + ((usize)qi * heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_row[d] = qv[d];
    __syncthreads();

    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    float acc[MAX_DIMS_PER_THREAD];
    for (int i = 0; i < MAX_DIMS_PER_THREAD; i++) acc[i] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    for (int c0 = 0; c0 < n; c0 += ATTN_CHUNK) {
        int cn = min(ATTN_CHUNK, n - c0);
        // Scores of the chunk, one position per warp at a time (lanes split head_dim).
        for (int j = warp; j < cn; j += warps) {
            int p = first + c0 + j;
            usize base = ((usize)table[p / block_size] * block_size + p % block_size) * slot_len + (usize)kh * head_dim;
            float dot = 0.0f;
            for (int d = lane; d < head_dim; d += WARP) dot += q_row[d] * to_f32(k_cache[base + d]);
            dot = warp_sum(dot);
            if (lane == 0) s[j] = dot * scale;
        }
        __syncthreads();
        float cm = NEG_INF;
        for (int j = threadIdx.x; j < cn; j += blockDim.x) cm = fmaxf(cm, s[j]);
        cm = block_max(cm, scratch);
        float nm = fmaxf(m, cm);
        float rescale = __expf(m - nm);  // 0 on the first chunk (m = -inf)
        float part = 0.0f;
        for (int j = threadIdx.x; j < cn; j += blockDim.x) {
            float e = __expf(s[j] - nm);
            s[j] = e;
            part += e;
        }
        part = block_sum(part, scratch);
        __syncthreads();
        l = l * rescale + part;
        // Weighted values: each thread owns dimensions d = threadIdx.x + i * blockDim.x.
        for (int i = 0; i < MAX_DIMS_PER_THREAD; i++) {
            int d = threadIdx.x + i * blockDim.x;
            if (d >= head_dim) break;
            float a = acc[i] * rescale;
            for (int j = 0; j < cn; j++) {
                int p = first + c0 + j;
                usize base = ((usize)table[p / block_size] * block_size + p % block_size) * slot_len + (usize)kh * head_dim;
                a += s[j] * to_f32(v_cache[base + d]);
            }
            acc[i] = a;
        }
        m = nm;
        __syncthreads();  // s is rewritten by the next chunk
    }
    float* o = out + ((usize)qi * heads + h) * head_dim;
    float inv = 1.0f / l;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; i++) {
        int d = threadIdx.x + i * blockDim.x;
        if (d < head_dim) o[d] = acc[i] * inv;
    }
}

// f32 activations to the storage type a GEMM reads.
template <typename T>
__device__ void to_storage(const float* x, T* out, usize n) {
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        from_f32(x[k], &out[k]);
    }
}

// y[r, col + o] += bias[o] for `rows` rows `ldy` wide (a layer's bias after its GEMM,
// which may have written a column range of a shared buffer).
__device__ void add_bias(float* y, const float* bias, usize rows, int cols, int col, int ldy) {
    usize n = rows * cols;
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        y[(k / cols) * ldy + col + k % cols] += bias[k % cols];
    }
}

// out[i, :] = x[rows[i], :]: the rows whose logits are wanted. One block per row.
__device__ void gather_rows(const float* x, const u32* rows, float* out, int hidden) {
    int i = blockIdx.x;
    const float* src = x + (usize)rows[i] * hidden;
    for (int d = threadIdx.x; d < hidden; d += blockDim.x) out[(usize)i * hidden + d] = src[d];
}

// Whole cache blocks to and from the export layout (KvBlockLayout): block blocks[i] of
// a layer's K or V cache (`part` values) is packed[i * stride + offset ..][..part].
// Grid-stride over every value of every block.
__device__ void gather_blocks(const u16* cache, const u32* blocks, u16* packed, usize n_blocks, usize part,
                              usize stride, usize offset) {
    usize n = n_blocks * part;
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        usize i = k / part, j = k % part;
        packed[i * stride + offset + j] = cache[(usize)blocks[i] * part + j];
    }
}

__device__ void scatter_blocks(const u16* packed, const u32* blocks, u16* cache, usize n_blocks, usize part,
                               usize stride, usize offset) {
    usize n = n_blocks * part;
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        usize i = k / part, j = k % part;
        cache[(usize)blocks[i] * part + j] = packed[i * stride + offset + j];
    }
}

// out[k] = offset + scale * u, u uniform in [-1, 1) from a hash of (seed, k): random
// weights written on the device, for benchmarks of model shapes with no checkpoint.
template <typename T>
__device__ void fill_uniform(T* out, usize n, unsigned long long seed, float offset, float scale) {
    for (usize k = (usize)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (usize)gridDim.x * blockDim.x) {
        unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (k + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
        from_f32(offset + scale * u, &out[k]);
    }
}

// ---- exported entry points ----------------------------------------------------------

#define FOR_STORAGE(X) X(f32, float) X(f16, f16) X(bf16, bf16)

#define ENTRY_POINTS(NAME, T)                                                                                   \
    extern "C" __global__ void embedding_##NAME(const T* table, const u32* ids, float* out, int hidden) {       \
        embedding<T>(table, ids, out, hidden);                                                                  \
    }                                                                                                           \
    extern "C" __global__ void rms_norm_##NAME(const float* x, const T* weight, T* out, int hidden, float eps) { \
        rms_norm<T, T>(x, weight, out, hidden, eps);                                                            \
    }                                                                                                           \
    extern "C" __global__ void rms_norm_f32_out_##NAME(const float* x, const T* weight, float* out, int hidden,  \
                                                      float eps) {                                              \
        rms_norm<T, float>(x, weight, out, hidden, eps);                                                        \
    }                                                                                                           \
    extern "C" __global__ void silu_mul_##NAME(const float* gate_up, T* out, int tokens, int inter) {           \
        silu_mul<T>(gate_up, out, tokens, inter);                                                               \
    }                                                                                                           \
    extern "C" __global__ void write_kv_##NAME(const float* k, const float* v, const u32* slots, T* k_cache,     \
                                               T* v_cache, int slot_len) {                                      \
        write_kv<T>(k, v, slots, k_cache, v_cache, slot_len);                                                   \
    }                                                                                                           \
    extern "C" __global__ void paged_attention_##NAME(                                                          \
        const float* q, const T* k_cache, const T* v_cache, const u32* tables, const u32* table_start,          \
        const u32* pos, const u32* window_start, float* out, int heads, int kv_heads, int head_dim,             \
        int block_size, float scale) {                                                                          \
        paged_attention<T>(q, k_cache, v_cache, tables, table_start, pos, window_start, out, heads, kv_heads,   \
                           head_dim, block_size, scale);                                                        \
    }                                                                                                           \
    extern "C" __global__ void to_storage_##NAME(const float* x, T* out, unsigned long long n) {                \
        to_storage<T>(x, out, (usize)n);                                                                        \
    }                                                                                                           \
    extern "C" __global__ void fill_uniform_##NAME(T* out, unsigned long long n, unsigned long long seed,        \
                                                   float offset, float scale) {                                 \
        fill_uniform<T>(out, (usize)n, seed, offset, scale);                                                    \
    }

FOR_STORAGE(ENTRY_POINTS)

extern "C" __global__ void rope_f32(float* x, const float* cos, const float* sin, int heads, int head_dim) {
    rope(x, cos, sin, heads, head_dim);
}

extern "C" __global__ void add_f32(float* x, const float* y, unsigned long long n) { add_inplace(x, y, (usize)n); }

extern "C" __global__ void add_bias_f32(float* y, const float* bias, unsigned long long rows, int cols, int col,
                                        int ldy) {
    add_bias(y, bias, (usize)rows, cols, col, ldy);
}

extern "C" __global__ void gather_rows_f32(const float* x, const u32* rows, float* out, int hidden) {
    gather_rows(x, rows, out, hidden);
}

extern "C" __global__ void gather_blocks_u16(const u16* cache, const u32* blocks, u16* packed, unsigned long long n,
                                             unsigned long long part, unsigned long long stride,
                                             unsigned long long offset) {
    gather_blocks(cache, blocks, packed, (usize)n, (usize)part, (usize)stride, (usize)offset);
}

extern "C" __global__ void scatter_blocks_u16(const u16* packed, const u32* blocks, u16* cache, unsigned long long n,
                                              unsigned long long part, unsigned long long stride,
                                              unsigned long long offset) {
    scatter_blocks(packed, blocks, cache, (usize)n, (usize)part, (usize)stride, (usize)offset);
}
