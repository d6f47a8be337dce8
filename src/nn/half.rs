//! Half precision (bf16, f16 on a GPU): which reductions run in f32. Norm statistics and
//! softmax sums over thousands of values lose their meaning in bf16 and overflow in f16.

use candle_core::DType;

/// f32 for a half-precision dtype, None for a dtype that reduces well on its own.
pub fn upcast(dtype: DType) -> Option<DType> {
    match dtype {
        DType::F16 | DType::BF16 => Some(DType::F32),
        _ => None,
    }
}
