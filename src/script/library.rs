//! The framework's Lua library (`lua/` in the repository), compiled into the binary so that
//! `require "sqdf"` works wherever a script lives.

pub const MODULES: &[(&str, &str)] = &[
    ("sqdf", include_str!("../../lua/sqdf.lua")),
    ("digits_reward", include_str!("../../lua/digits_reward.lua")),
    (
        "baselines.on_policy",
        include_str!("../../lua/baselines/on_policy.lua"),
    ),
    (
        "baselines.draft",
        include_str!("../../lua/baselines/draft.lua"),
    ),
    (
        "baselines.refl",
        include_str!("../../lua/baselines/refl.lua"),
    ),
    (
        "baselines.ddpo",
        include_str!("../../lua/baselines/ddpo.lua"),
    ),
    (
        "baselines.seiko",
        include_str!("../../lua/baselines/seiko.lua"),
    ),
];

pub fn find(name: &str) -> Option<&'static str> {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
}
