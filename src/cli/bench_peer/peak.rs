//! The CPU's f32 multiply-add throughput: independent FMA chains on every thread, the
//! ceiling the work items' GFLOP/s are compared with. AVX-512 or AVX2+FMA when the CPU has
//! them (detected at run time), else plain `mul_add`.

use std::time::Instant;

/// Iterations of each thread's loop: 10 GFLOP with AVX-512, about 0.1 s on a current core
/// (runs much shorter than that measure thread start-up and clock ramp-up as well).
const ITERS: u64 = 20_000_000;

/// Measured peak GFLOP/s (an FMA counts 2) on `threads` threads, the best of 5 runs, and
/// the instruction set used.
pub fn peak_gflops(threads: usize) -> (f64, &'static str) {
    let (kernel, flops_per_iter, isa) = pick();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let sum: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| kernel(ITERS))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        let secs = start.elapsed().as_secs_f64();
        // The sum keeps the loops from being optimised away.
        std::hint::black_box(sum);
        best = best.max(threads as f64 * ITERS as f64 * flops_per_iter / secs / 1e9);
    }
    (best, isa)
}

type Kernel = fn(u64) -> f32;

fn pick() -> (Kernel, f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return (|n| unsafe { x86::avx512(n) }, x86::AVX512_FLOPS, "avx512");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return (|n| unsafe { x86::avx2(n) }, x86::AVX2_FLOPS, "avx2+fma");
        }
    }
    (scalar, SCALAR_FLOPS, "scalar")
}

const SCALAR_FLOPS: f64 = 2.0 * 8.0;

fn scalar(iters: u64) -> f32 {
    let mut acc = [0f32; 8];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-6);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 16 chains of 16 lanes, 2 flops each.
    pub const AVX512_FLOPS: f64 = 2.0 * 16.0 * 16.0;
    /// 12 chains of 8 lanes (16 ymm registers hold them and the two constants).
    pub const AVX2_FLOPS: f64 = 2.0 * 12.0 * 8.0;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-6);
        let mut acc = [_mm512_setzero_ps(); 16];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-6);
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for r in acc {
            s = _mm256_add_ps(s, r);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}
