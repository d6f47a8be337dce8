//! The framework's Lua library (`lua/` in the repository), compiled into the binary so that
//! `require "sqdf"` works wherever a script lives.

pub const MODULES: &[(&str, &str)] = &[("sqdf", include_str!("../../lua/sqdf.lua"))];

pub fn find(name: &str) -> Option<&'static str> {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
}
