/*
 * cuda_emu.h - a host emulation of the small CUDA subset comfy_sdnq's kernels use, so that
 * csrc/cuda/*.cu compile with g++ (-DSDNQ_CUDA_EMU -x c++) and run on the CPU, on host memory.
 * tests/test_cuda_emu.py builds them with this header and runs tests/test_cuda.py's checks on
 * machines without a GPU. It is a test tool, never part of a build that ships.
 *
 * Model: a launch runs its blocks one after another; the threads of a block are coroutines
 * (ucontext) scheduled round-robin on one OS thread, each to its next barrier. __syncthreads
 * releases when every live thread of the block waits on it (exited threads count as arrived,
 * as on the GPU). Warp-collective operations (mma.sync, __shfl_xor_sync) exchange values
 * through per-warp slots between two warp barriers, and abort when a lane of the warp has
 * exited or waits elsewhere (divergent warp-collective use is undefined on the GPU).
 * __shared__ variables are function statics: shared by the block, reused by the next block.
 */
#ifndef SDNQ_CUDA_EMU_H
#define SDNQ_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <vector>

#include "codec.h"

/* ------------------------------------------------------------------------ */
/* keywords and types                                                        */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint2 { unsigned int x, y; };
struct uint4 { unsigned int x, y, z, w; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

typedef void *cudaStream_t;
typedef enum { cudaSuccess = 0 } cudaError_t;
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }

/* ------------------------------------------------------------------------ */
/* intrinsics (C++ float ops; the build uses -ffp-contract=off)              */

template <class T> static inline T __ldg(const T *p) { return *p; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
/* PTX prmt (default mode): byte i of the result is byte (s >> 4i) & 7 of the pair {y:x} */
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned sh) {
    sh &= 31;
    return sh ? (lo >> sh) | (hi << (32 - sh)) : lo;
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}

struct __nv_bfloat16 { uint16_t x; };
struct __nv_bfloat162 { uint16_t x, y; };
struct __half { uint16_t x; };
struct __half2 { uint16_t x, y; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{sdnq_f32_to_bf16(f)}; }
static inline float __bfloat162float(__nv_bfloat16 h) { return sdnq_bf16_to_f32(h.x); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{sdnq_f32_to_bf16(a), sdnq_f32_to_bf16(b)};
}
static inline __half __float2half_rn(float f) { return __half{sdnq_f32_to_f16(f)}; }
static inline float __half2float(__half h) { return sdnq_f16_to_f32(h.x); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{sdnq_f32_to_f16(a), sdnq_f32_to_f16(b)}; }

/* ------------------------------------------------------------------------ */
/* the scheduler                                                             */

namespace sdnq_emu {

enum State { RUN, WAIT_BLOCK, WAIT_WARP, DONE };

struct Thread {
    ucontext_t ctx;
    State state;
};

struct Block {
    dim3 grid, block, bid;
    unsigned n = 0, cur = 0;
    std::vector<Thread> th;
    std::vector<char> stacks;
    ucontext_t sched;
    const void *body = nullptr;
    void (*run_body)(const void *) = nullptr;
    /* warp exchange slots: up to 16 32-bit values per lane */
    std::vector<uint32_t> slots;
};

inline Block &blk() {
    static Block b;
    return b;
}

constexpr size_t STACK = 256 * 1024;

inline void trampoline() {
    Block &b = blk();
    b.run_body(b.body);
    b.th[b.cur].state = DONE;
    swapcontext(&b.th[b.cur].ctx, &b.sched);
}

inline void wait(State s) {
    Block &b = blk();
    b.th[b.cur].state = s;
    swapcontext(&b.th[b.cur].ctx, &b.sched);
}

/* one block: run every thread to a barrier or its end, release barriers, repeat */
inline void run_block() {
    Block &b = blk();
    for (unsigned t = 0; t < b.n; t++) {
        getcontext(&b.th[t].ctx);
        b.th[t].ctx.uc_stack.ss_sp = b.stacks.data() + (size_t)t * STACK;
        b.th[t].ctx.uc_stack.ss_size = STACK;
        b.th[t].ctx.uc_link = nullptr;
        makecontext(&b.th[t].ctx, trampoline, 0);
        b.th[t].state = RUN;
    }
    for (;;) {
        bool ran = false;
        for (unsigned t = 0; t < b.n; t++)
            if (b.th[t].state == RUN) {
                b.cur = t;
                swapcontext(&b.sched, &b.th[t].ctx);
                ran = true;
            }
        if (ran) continue;
        bool any_warp = false, all_block = true, all_done = true;
        for (unsigned w = 0; w * 32 < b.n; w++) {
            unsigned lanes = b.n - w * 32 < 32 ? b.n - w * 32 : 32, waiting = 0;
            for (unsigned l = 0; l < lanes; l++) waiting += b.th[w * 32 + l].state == WAIT_WARP;
            if (waiting == lanes) {
                for (unsigned l = 0; l < lanes; l++) b.th[w * 32 + l].state = RUN;
                any_warp = true;
            } else if (waiting > 0 && waiting != lanes) {
                /* some lanes wait on a warp-collective, others don't: released only when all do */
            }
        }
        if (any_warp) continue;
        for (unsigned t = 0; t < b.n; t++) {
            if (b.th[t].state != DONE) all_done = false;
            if (b.th[t].state != DONE && b.th[t].state != WAIT_BLOCK) all_block = false;
        }
        if (all_done) return;
        if (all_block) {
            for (unsigned t = 0; t < b.n; t++)
                if (b.th[t].state == WAIT_BLOCK) b.th[t].state = RUN;
            continue;
        }
        fprintf(stderr, "cuda_emu: deadlock (a warp-collective operation with lanes missing, or a barrier "
                        "not reached by every thread)\n");
        abort();
    }
}

template <class F> void launch(dim3 grid, dim3 block, F &&body) {
    Block &b = blk();
    b.grid = grid;
    b.block = block;
    b.n = block.x * block.y * block.z;
    b.th.assign(b.n, Thread{});
    b.stacks.resize((size_t)b.n * STACK);
    b.slots.assign((size_t)b.n * 16, 0);
    b.body = &body;
    b.run_body = [](const void *f) { (*(F *)f)(); };
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                b.bid = dim3(x, y, z);
                run_block();
            }
}

inline dim3 thread_idx() {
    Block &b = blk();
    return dim3(b.cur % b.block.x, (b.cur / b.block.x) % b.block.y, b.cur / (b.block.x * b.block.y));
}

inline void syncthreads() { wait(WAIT_BLOCK); }
inline void syncwarp() { wait(WAIT_WARP); }
inline unsigned lane() { return blk().cur % 32; }
inline uint32_t *slot(unsigned t) { return &blk().slots[(size_t)t * 16]; }

/* value of lane (lane ^ mask) */
inline float shfl_xor(float v, int mask) {
    Block &b = blk();
    const unsigned me = b.cur, warp0 = me - me % 32;
    memcpy(slot(me), &v, 4);
    syncwarp();
    float r;
    memcpy(&r, slot(warp0 + ((me % 32) ^ (unsigned)mask)), 4);
    syncwarp();
    return r;
}

inline float lo16(uint32_t r, bool bf16) {
    return bf16 ? sdnq_bf16_to_f32((uint16_t)r) : sdnq_f16_to_f32((uint16_t)r);
}
inline float hi16(uint32_t r, bool bf16) {
    return bf16 ? sdnq_bf16_to_f32((uint16_t)(r >> 16)) : sdnq_f16_to_f32((uint16_t)(r >> 16));
}

/* packed 16-bit pairs (lo first): a - b, each half rounded once to BF16 or F16 */
inline uint32_t h2_sub(uint32_t a, uint32_t b, bool bf16) {
    uint32_t r = 0;
    for (int h = 0; h < 2; h++) {
        const double x = h ? hi16(a, bf16) : lo16(a, bf16), y = h ? hi16(b, bf16) : lo16(b, bf16);
        const float v = (float)(x - y); /* exact for the operands the kernels pass */
        r |= (uint32_t)(bf16 ? sdnq_f32_to_bf16(v) : sdnq_f32_to_f16(v)) << (16 * h);
    }
    return r;
}

/* mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: PTX ISA fragment layouts, products
 * summed in double and added to the fp32 accumulators */
inline void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                     bool bf16) {
    Block &b = blk();
    const unsigned me = b.cur, warp0 = me - me % 32;
    uint32_t *s = slot(me);
    s[0] = a0, s[1] = a1, s[2] = a2, s[3] = a3, s[4] = b0, s[5] = b1;
    syncwarp();
    double A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; l++) {
        const uint32_t *q = slot(warp0 + l);
        const unsigned g = l / 4, t = l % 4;
        A[g][2 * t] = lo16(q[0], bf16), A[g][2 * t + 1] = hi16(q[0], bf16);
        A[g + 8][2 * t] = lo16(q[1], bf16), A[g + 8][2 * t + 1] = hi16(q[1], bf16);
        A[g][2 * t + 8] = lo16(q[2], bf16), A[g][2 * t + 9] = hi16(q[2], bf16);
        A[g + 8][2 * t + 8] = lo16(q[3], bf16), A[g + 8][2 * t + 9] = hi16(q[3], bf16);
        B[2 * t][g] = lo16(q[4], bf16), B[2 * t + 1][g] = hi16(q[4], bf16);
        B[2 * t + 8][g] = lo16(q[5], bf16), B[2 * t + 9][g] = hi16(q[5], bf16);
    }
    syncwarp();
    const unsigned g = (me % 32) / 4, t = (me % 32) % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; i++) {
        double acc = 0;
        for (int k = 0; k < 16; k++) acc += A[rows[i]][k] * B[k][cols[i]];
        d[i] = (float)((double)d[i] + acc);
    }
}

}  // namespace sdnq_emu

#define threadIdx (sdnq_emu::thread_idx())
#define blockIdx (sdnq_emu::blk().bid)
#define blockDim (sdnq_emu::blk().block)
#define gridDim (sdnq_emu::blk().grid)
#define __syncthreads() sdnq_emu::syncthreads()
#define __shfl_xor_sync(mask, v, lanemask) sdnq_emu::shfl_xor((v), (lanemask))

#endif /* SDNQ_CUDA_EMU_H */
