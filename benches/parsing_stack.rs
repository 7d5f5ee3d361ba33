//! Parsing stack: how much stack the AMQP client's parser takes per level of header nesting,
//! the figure `rabbitmq::PARSE_STACK_PER_NESTING_LEVEL` is set from (docs/benchmarks.md,
//! Parsing stack). For tables and arrays nested 4 000 and 16 000 levels deep, parsed, cloned,
//! formatted and dropped as a delivery's headers are, it finds by bisection the smallest thread
//! stack that survives, each try in a child process of its own (an overflow aborts the
//! process). Run it in both profiles: the service's tests run a debug build.
//!
//! ```sh
//! cargo bench --bench parsing_stack                 # release
//! cargo bench --bench parsing_stack --profile dev   # debug
//! ```

// The kit is shared with the tests and the other benchmarks; this one uses its frame builders.
#[allow(dead_code)]
#[path = "../tests/kit/raw_amqp.rs"]
mod raw_amqp;

use lapin::types::parsing::parse_field_table;
use std::process::{Command, Stdio};

const DEPTHS: [usize; 2] = [4_000, 16_000];
/// Bisection stops within this many bytes.
const RESOLUTION: usize = 16 * 1024;

fn encoded(kind: &str, depth: usize) -> Vec<u8> {
    match kind {
        "tables" => raw_amqp::nested_tables(depth),
        _ => raw_amqp::nested_arrays(depth),
    }
}

/// The child: parses, clones, formats and drops the table on a thread of `stack` bytes.
fn child(kind: &str, depth: usize, stack: usize) {
    let bytes = encoded(kind, depth);
    let worker = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let (_, table) = parse_field_table(bytes.as_slice()).expect("a valid table");
            let copy = table.clone();
            let text = format!("{copy:?}");
            drop(copy);
            drop(table);
            text.len()
        })
        .expect("thread");
    let _ = worker.join();
}

fn survives(kind: &str, depth: usize, stack: usize) -> bool {
    let exe = std::env::current_exe().expect("own path");
    Command::new(exe)
        .args(["--child", kind, &depth.to_string(), &stack.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn smallest_stack(kind: &str, depth: usize) -> usize {
    let (mut too_small, mut enough) = (64 * 1024, 2 * 1024 * 1024 * 1024);
    while enough - too_small > RESOLUTION {
        let middle = too_small + (enough - too_small) / 2;
        if survives(kind, depth, middle) {
            enough = middle;
        } else {
            too_small = middle;
        }
    }
    enough
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let number = |at: usize| args.get(at).and_then(|n| n.parse().ok()).unwrap_or(0);
        child(&args[2], number(3), number(4));
        return;
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("parsing stack, {profile} build: smallest thread stack that parses, clones, formats and drops");
    println!("| nesting | levels | bytes | stack | per level |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for kind in ["tables", "arrays"] {
        for depth in DEPTHS {
            let stack = smallest_stack(kind, depth);
            println!(
                "| {kind} | {depth} | {} | {} KiB | {} B |",
                encoded(kind, depth).len(),
                stack / 1024,
                stack / depth
            );
        }
    }
}
