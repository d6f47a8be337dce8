//! Tests of `config.rs`.
use super::*;

#[test]
fn a_stored_config_without_a_newer_key_takes_its_default() {
    // A checkpoint written before `optimizer_reset` existed.
    let mut stored = serde_json::to_value(RunConfig::default()).unwrap();
    stored.as_object_mut().unwrap().remove("optimizer_reset");
    stored["epochs"] = serde_json::json!(7);
    let cfg: RunConfig = serde_json::from_value(stored).unwrap();
    assert!(cfg.optimizer_reset);
    assert_eq!(cfg.epochs, 7);
}

#[test]
fn dotted_overrides_reach_into_params_and_surrogate() {
    let o = |s: &str| parse_override(s).unwrap();
    let cfg = RunConfig::from_lua(
        None,
        &[o("queries=[4,4]"), o("surrogate.c1=0.002"), o("params.w=3")],
        "test",
    )
    .unwrap();
    assert_eq!(cfg.surrogate["c1"], 0.002);
    assert_eq!(cfg.params["w"], 3);
    // Integral floats are integers, in a list too; a fractional one names its place.
    let cfg =
        RunConfig::from_lua(None, &[o("queries=[128.0,2.56e2]"), o("epochs=3e1")], "t").unwrap();
    assert_eq!((cfg.queries, cfg.epochs), (vec![128, 256], 30));
    let e = RunConfig::from_lua(None, &[o("queries=[128,1.5]")], "s.lua").unwrap_err();
    assert!(
        format!("{e:#}")
            .contains("s.lua: config.queries[2] must be a non-negative integer, got 1.5"),
        "{e:#}"
    );
    let e = RunConfig::from_lua(None, &[o("lr.x=1")], "test").unwrap_err();
    assert!(
        format!("{e:#}").contains("unknown config key `lr.x`"),
        "{e:#}"
    );
}
