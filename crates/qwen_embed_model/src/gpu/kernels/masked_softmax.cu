// The attention's masked softmax on a GPU, one kernel instead of four passes over the scores (cast to f32, add a
// broadcast mask, softmax, cast back): see ../softmax.rs.
//
// scores and probs: rows × keys, contiguous. One block per row; row r is query (r % n) of sequence (r / per_seq) and
// sees keys starts[(r / per_seq) * n + r % n] ..= first + r % n (encoder.rs's visible_keys). The softmax is computed
// in f32 over those keys; every other key gets probability 0.

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(unsigned short x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(unsigned short* p, float v) {
    // bf16, rounded to nearest even (v is a probability: finite).
    unsigned int u = __float_as_uint(v);
    u += 0x7fffu + ((u >> 16) & 1u);
    *p = (unsigned short)(u >> 16);
}

// The max (or sum) over the block, in every thread. blockDim.x is a multiple of 32, at most 1024.
template <bool MAX>
__device__ float block_reduce(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? shared[lane] : (MAX ? -INFINITY : 0.f);
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_xor_sync(0xffffffffu, v, o);
            v = MAX ? fmaxf(v, w) : v + w;
        }
        if (lane == 0) shared[32] = v;
    }
    __syncthreads();
    v = shared[32];
    __syncthreads();  // shared is reused by the next reduction
    return v;
}

template <typename T>
__device__ void masked_softmax(const T* scores, T* probs, const unsigned int* starts, unsigned int keys,
                               unsigned int n, unsigned int per_seq, unsigned int first) {
    __shared__ float shared[33];
    const size_t r = blockIdx.x;
    const unsigned int q = r % n;
    const unsigned int lo = starts[(r / per_seq) * n + q], hi = first + q;
    const T* row = scores + r * keys;
    T* out = probs + r * keys;
    float m = -INFINITY;
    for (unsigned int j = lo + threadIdx.x; j <= hi; j += blockDim.x) m = fmaxf(m, load(row[j]));
    m = block_reduce<true>(m, shared);
    float s = 0.f;
    for (unsigned int j = lo + threadIdx.x; j <= hi; j += blockDim.x) s += expf(load(row[j]) - m);
    s = block_reduce<false>(s, shared);
    const float inv = 1.f / s;
    for (unsigned int j = threadIdx.x; j < keys; j += blockDim.x) {
        store(out + j, (j >= lo && j <= hi) ? expf(load(row[j]) - m) * inv : 0.f);
    }
}

extern "C" __global__ void masked_softmax_f32(const float* scores, float* probs, const unsigned int* starts,
                                              unsigned int keys, unsigned int n, unsigned int per_seq,
                                              unsigned int first) {
    masked_softmax(scores, probs, starts, keys, n, per_seq, first);
}

extern "C" __global__ void masked_softmax_bf16(const unsigned short* scores, unsigned short* probs,
                                               const unsigned int* starts, unsigned int keys, unsigned int n,
                                               unsigned int per_seq, unsigned int first) {
    masked_softmax(scores, probs, starts, keys, n, per_seq, first);
}
