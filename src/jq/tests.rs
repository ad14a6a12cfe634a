//! The budgets, tested with the hostile inputs that crashed or froze the daemon when filters
//! ran in it (issue #43: a payload of 8,000 `[`, `fromjson` on 20,000, `range(0; .n)` with
//! n = 10¹², `"#" * .n` with n = 10⁹ and 10¹⁸).

use std::time::Instant;

use super::*;

/// Not a test: the worker, when this test binary is started as one (see
/// `sandbox::command`). Run as a test, it returns at once.
#[test]
fn worker() {
    let Ok(budget) = std::env::var(sandbox::TEST_WORKER) else {
        return;
    };
    let mut numbers = budget.split(' ').map(|n| n.parse::<usize>().unwrap());
    let (memory, output) = (numbers.next().unwrap(), numbers.next().unwrap());
    let code = match worker::serve(memory, output) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code);
}

fn small(time_ms: u64) -> Budget {
    Budget {
        time: Duration::from_millis(time_ms),
        memory: 16 * 1024 * 1024,
        output: 64 * 1024,
    }
}

fn run(filter: &Filter, input: &str) -> Result<Option<String>, RunError> {
    filter
        .run(input.as_bytes())
        .map(|v| v.map(|v| String::from_utf8(v).unwrap()))
}

#[test]
fn a_filter_maps_its_input_in_its_worker() {
    let f = Filter::compile("{t: .temp, p: (.occ == 1)}", small(5_000)).unwrap();
    assert_eq!(
        run(&f, r#"{"temp":21.5,"occ":1}"#).unwrap().as_deref(),
        Some(r#"{"t":21.5,"p":true}"#)
    );
    assert_eq!(
        run(&f, r#"{"temp":19,"occ":0}"#).unwrap().as_deref(),
        Some(r#"{"t":19,"p":false}"#)
    );
    let f = Filter::compile("select(.x) | .y", small(5_000)).unwrap();
    assert_eq!(run(&f, r#"{"x":false}"#).unwrap(), None);
    assert_eq!(
        run(&f, "[").unwrap_err().to_string().contains("not JSON"),
        true
    );
}

#[test]
fn compile_errors_name_what_is_wrong() {
    for (code, part) in [
        ("{a: ", "does not parse"),
        ("now", "`now`"),
        ("env.HOME", "`env`"),
        ("input", "`input`"),
    ] {
        let e = Filter::compile(code, Budget::MAPPING).unwrap_err();
        assert!(e.contains(part), "{code}: {e}");
    }
}

/// Each hostile case gives an error naming its bound, and the same filter answers the next,
/// good, input (its worker started again where it was stopped).
#[test]
fn hostile_inputs_break_a_budget_and_the_next_input_is_served() {
    let deep = "[".repeat(8000);
    let deep_string = serde_json::to_string(&"[".repeat(20_000)).unwrap();
    #[rustfmt::skip]
    let table: &[(&str, String, &str)] = &[
        // (filter, hostile input, what the error says)
        (".", deep.clone(), "deeper than 128"),
        (".s | fromjson", format!(r#"{{"s":{deep_string}}}"#), "deeper than 128"),
        ("[range(0; .n)] | length", r#"{"n":1e12}"#.into(), "memory budget"),
        ("last(range(0; .n))", r#"{"n":1e12}"#.into(), "time budget"),
        (r##""#" * .n | length"##, r#"{"n":1000000000}"#.into(), "memory budget"),
        (r##""#" * .n | length"##, r#"{"n":1000000000000000000}"#.into(), "memory budget"),
        ("def f: if . > 0 then (. - 1 | f) + 1 else 0 end; .n | f", r#"{"n":1e9}"#.into(), "stopped"),
        ("[.[] | tostring * 100]", format!("[{}1]", "1,".repeat(1_000)), "more than the 65536 allowed"),
    ];
    for (code, input, want) in table {
        let f = Filter::compile(code, small(1_000)).unwrap();
        let started = Instant::now();
        let e = run(&f, input).unwrap_err().to_string();
        assert!(e.contains(want), "{code}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{code}: took {:?}",
            started.elapsed()
        );
        // The same filter, its worker gone, serves a good input.
        let good = r#"{"n":3,"s":"[1]"}"#;
        assert!(
            run(&f, good).is_ok(),
            "{code}: after the hostile input: {:?}",
            run(&f, good)
        );
    }
}

#[test]
fn a_dropped_filter_leaves_no_worker_running() {
    let f = Filter::compile(".", small(5_000)).unwrap();
    run(&f, "1").unwrap();
    let pid = f.worker.lock().unwrap().as_ref().unwrap().pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(f);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "worker {pid} still there"
    );
}
