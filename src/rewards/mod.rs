//! Reward functions the framework provides to scripts (analytic scores and reward models).

pub mod aesthetic;
pub mod clip_preprocess;
pub mod clip_score;
pub mod gold;
