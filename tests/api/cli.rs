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

#[test]
fn a_bad_flag_or_env_value_is_one_line_naming_the_option() {
    for (args, env, option) in [
        (vec!["serve", "--bind", "nowhere"], vec![], "--bind"),
        (
            vec!["serve"],
            vec![("PULSEBOARD_TIMEZONE", "Mars/Olympus")],
            "--timezone",
        ),
        (
            vec!["serve"],
            vec![("DATABASE_URL", "mysql://db")],
            "--database-url",
        ),
        (
            vec!["serve"],
            vec![("AMQP_URL", "http://broker")],
            "--amqp-url",
        ),
        (vec!["simulate"], vec![], "--rate"),
    ] {
        let (code, stderr) = run(&args, &env);
        assert_ne!(code, 0, "{args:?} {env:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(option), "{option} named in: {stderr}");
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
