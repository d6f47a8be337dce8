//! The evaluation metrics' networks (paper §5.1, Appendix D): frozen, evaluation only.

pub mod alexnet;
pub mod lpips;
