//! The off-policy replay buffer of §4.2.3: whole trajectories in, single states out,
//! uniformly or in proportion to a priority (Appendix E.1) drawn through a sum-tree.

pub mod buffer;
pub mod sum_tree;

pub use buffer::{ReplayBuffer, StateRef};
pub use sum_tree::SumTree;
