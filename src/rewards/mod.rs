//! Reward functions the framework provides to scripts (analytic scores and reward models).

pub mod gold;
