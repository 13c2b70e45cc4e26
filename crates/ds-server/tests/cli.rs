//! The `datastorage` binary's command line: `--help`, `config check`, `config keys`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Output};

fn datastorage(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datastorage"));
    cmd.args(args);
    // Only what the test sets: no DATASTORAGE_* or DATABASE_URL of the caller's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("DATASTORAGE_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn help_documents_the_subcommands() {
    let out = datastorage(&["--help"], &[]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    for sub in [
        "serve",
        "migrate",
        "config",
        "--config",
        "DATASTORAGE_CONFIG_FILE",
    ] {
        assert!(stdout.contains(sub), "--help lacks {sub}: {stdout}");
    }
    let out = datastorage(&["config", "--help"], &[]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("check") && stdout.contains("keys"),
        "{stdout}"
    );
}

#[test]
fn config_check_accepts_a_valid_file_overlaid_by_the_environment_and_hides_secrets() {
    let file = temp_file(
        "good.toml",
        "[database]\nurl = \"postgres://u:hunter2@db:5432/ds\"\npool_size = 8\n[server]\nhttp_workers = 3\n",
    );
    let out = datastorage(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("DATASTORAGE_DB_POOL_SIZE", "24")],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("database.pool_size = \"24\""), "{stdout}");
    assert!(stdout.contains("from the environment"), "{stdout}");
    assert!(stdout.contains("server.http_workers = \"3\""), "{stdout}");
    assert!(stdout.contains("database.url = \"<set>\""), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}

#[test]
fn config_check_rejects_a_bad_file_naming_the_key_and_starts_nothing() {
    let file = temp_file(
        "bad.toml",
        "[database]\nurl = \"postgres://x/db\"\npool_size = \"lots\"\n",
    );
    let out = datastorage(&["config", "check", "-c", file.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("DATASTORAGE_DB_POOL_SIZE"), "{stderr}");
    assert!(stderr.contains("database.pool_size"), "{stderr}");

    let file = temp_file("typo.toml", "[database]\npool_sise = 3\n");
    let out = datastorage(&["config", "check", "-c", file.to_str().unwrap()], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("did you mean `database.pool_size`"),
        "{stderr}"
    );

    let out = datastorage(&["config", "check", "-c", "/nonexistent/ds.toml"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("cannot read /nonexistent/ds.toml"),
        "{stderr}"
    );

    // No file, no database URL: the required key is named.
    let out = datastorage(&["config", "check"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("DATASTORAGE_DATABASE_URL"), "{stderr}");
}

#[test]
fn config_keys_lists_every_key() {
    let out = datastorage(&["config", "keys"], &[]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    assert!(stdout.contains("database.pool_size") && stdout.contains("DATASTORAGE_DB_POOL_SIZE"));
    let out = datastorage(&["config", "keys", "--markdown"], &[]);
    let (stdout, _) = text(&out);
    let doc = include_str!("../../../docs/configuration.md");
    assert!(
        doc.contains(&stdout),
        "docs/configuration.md differs from `config keys --markdown`"
    );
}
