//! Scenario errors name the file, the line and the field.

use specie_chaos::{Scenario, ScenarioError};

const BASE: &str = r#"name = "t"

[cluster]
institutions = 2
wallets = 8

[workload]
rate_per_s = 10
mix = { pay = 1 }

[phases]
warmup = "1s"
faults = "10s"
converge_max = "40s"
after = "1s"

[[fault]]
kind = "delay"
start = "1s"
duration = "2s"
latency = "20ms"

[[fault]]
kind = "kill"
start = "3s"
selector = { actor_kind = "institution", mode = "one" }
"#;

fn err(text: &str) -> String {
    Scenario::parse(text, "s.toml").unwrap_err().to_string()
}

#[test]
fn the_base_scenario_is_valid() {
    let s = Scenario::parse(BASE, "s.toml").expect("valid");
    assert_eq!(s.faults.len(), 2);
    assert_eq!(s.faults[1].line, 24);
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let e = err(&BASE.replace("latency = \"20ms\"", "latency = \"20ms\"\njiter = \"5ms\""));
    assert!(e.starts_with("s.toml:22:"), "{e}");
    assert!(e.contains("jiter"), "{e}");
}

#[test]
fn a_field_that_does_not_apply_to_the_fault_is_refused() {
    let e = err(&BASE.replace("start = \"3s\"", "start = \"3s\"\npercent = 5"));
    assert_eq!(
        e,
        "s.toml:26: field `fault[1].percent` does not apply to a `kill` fault"
    );
}

#[test]
fn an_unknown_fault_kind_lists_the_vocabulary() {
    let e = err(&BASE.replace("kind = \"delay\"", "kind = \"latency\""));
    assert!(
        e.starts_with(
            "s.toml:18: field `fault[0].kind` `latency` is not a fault; one of delay, loss"
        ),
        "{e}"
    );
}

#[test]
fn a_selector_naming_a_missing_actor_is_refused() {
    let e = err(&BASE.replace("mode = \"one\"", "ids = [5]"));
    assert_eq!(
        e,
        "s.toml:26: field `fault[1].selector.ids` id 5 does not exist: there are 2 institutions"
    );
}

#[test]
fn a_bad_duration_is_a_parse_error_at_its_line() {
    let e = err(&BASE.replace("duration = \"2s\"", "duration = \"two seconds\""));
    assert!(e.starts_with("s.toml:20:"), "{e}");
    assert!(e.contains("not a duration"), "{e}");
}

#[test]
fn a_fault_outside_the_fault_phase_is_refused() {
    let e = err(&BASE.replace("start = \"3s\"", "start = \"12s\""));
    assert!(
        e.starts_with(
            "s.toml:25: field `fault[1].start` (12000 ms) must fall inside the fault phase"
        ),
        "{e}"
    );
}

#[test]
fn a_convergence_bound_shorter_than_a_saga_can_take_is_refused() {
    let e = err(&BASE.replace("converge_max = \"40s\"", "converge_max = \"5s\""));
    assert!(
        e.starts_with("s.toml:14: field `phases.converge_max` (5000 ms) must be at least"),
        "{e}"
    );
}

#[test]
fn a_partition_needs_two_groups_of_real_actors() {
    let one = BASE.replace(
        "kind = \"delay\"\nstart = \"1s\"\nduration = \"2s\"\nlatency = \"20ms\"",
        "kind = \"partition\"\nstart = \"1s\"\nduration = \"2s\"\ngroups = [[\"inst-0\"]]",
    );
    assert_eq!(
        err(&one),
        "s.toml:21: field `fault[0].groups` needs at least two groups, has 1"
    );
    let ghost = one.replace("[[\"inst-0\"]]", "[[\"inst-0\"], [\"inst-9\"]]");
    assert_eq!(
        err(&ghost),
        "s.toml:21: field `fault[0].groups` inst-9 does not exist: the cluster has 2 institutions"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = Scenario::load(std::path::Path::new("/nonexistent/s.toml")).unwrap_err();
    assert!(matches!(e, ScenarioError::Io { .. }));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/s.toml: cannot read"));
}
