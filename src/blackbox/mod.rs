//! Online black-box optimisation (paper Algorithm 2): the oracle with its query budget, the learned surrogate with its uncertainty, and the outer rounds.
