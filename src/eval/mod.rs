//! Evaluation: metrics of samples and the plots that show them.

pub mod scatter;
pub mod toy;
