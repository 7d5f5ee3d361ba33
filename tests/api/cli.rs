//! The command line: bad values end with one clear line and a non-zero status.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run pulseboard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A bad value is one line naming the option, and the environment variable too when the value
/// came from there; a secret's value is never repeated.
#[test]
fn a_bad_flag_or_env_value_is_one_line_naming_the_option() {
    for (args, env, option, variable) in [
        (vec!["serve", "--bind", "nowhere"], vec![], "--bind", None),
        (
            vec!["serve"],
            vec![("PULSEBOARD_BIND", "nowhere")],
            "--bind",
            Some("(env PULSEBOARD_BIND)"),
        ),
        (
            // Flags win, so the variable is not what was refused.
            vec!["serve", "--bind", "nowhere"],
            vec![("PULSEBOARD_BIND", "127.0.0.1:0")],
            "--bind",
            None,
        ),
        (
            vec!["serve"],
            vec![("PULSEBOARD_TIMEZONE", "Mars/Olympus")],
            "--timezone",
            Some("(env PULSEBOARD_TIMEZONE)"),
        ),
        (
            vec!["serve"],
            vec![("DATABASE_URL", "mysql://db")],
            "--database-url",
            Some("(env DATABASE_URL)"),
        ),
        (
            vec!["serve"],
            vec![("AMQP_URL", "http://user:hunter2-amqp@broker")],
            "--amqp-url",
            Some("(env AMQP_URL)"),
        ),
        (
            vec!["serve"],
            vec![("PULSEBOARD_SECRET", "hunter2-short")],
            "--secret",
            Some("(env PULSEBOARD_SECRET)"),
        ),
        (vec!["simulate"], vec![], "--rate", None),
    ] {
        let (code, stderr) = run(&args, &env);
        assert_ne!(code, 0, "{args:?} {env:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(option), "{option} named in: {stderr}");
        match variable {
            Some(variable) => assert!(stderr.contains(variable), "{variable} in: {stderr}"),
            None => assert!(!stderr.contains("(env "), "no variable named: {stderr}"),
        }
        assert!(!stderr.contains("hunter2"), "a secret repeated: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_port_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let (code, stderr) = run(&["serve", "--bind", &address], &[("RUST_LOG", "off")]);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PULSEBOARD_BIND") && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn help_works_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["simulate", "--help"],
        vec!["migrate", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_pulseboard"))
            .args(&args)
            .output()
            .expect("run");
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"));
    }
}
