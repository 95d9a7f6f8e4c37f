//! The `chainql` binary as a user runs it: keys, the shell on scripts, embedded and connected
//! and on a terminal, and the consensus simulation.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{NodeProcess, chainql};

/// Runs `chainql shell` with `arguments`, feeding `input` on stdin; returns (success, stdout,
/// stderr).
fn shell(arguments: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .arg("shell")
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the script");
    let output = child.wait_with_output().expect("shell output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn keys_new_writes_a_private_key_and_prints_its_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys").join("alice.key");
    let path_text = path.to_str().expect("utf-8");
    let printed = chainql(&["keys", "new", "--out", path_text]);
    let address = printed.trim();
    assert!(address.starts_with("0x") && address.len() == 42, "{address}");
    assert_eq!(chainql(&["keys", "address", "--key", path_text]).trim(), address);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["keys", "new", "--out", path_text])
        .output()
        .expect("run");
    assert!(!again.status.success(), "an existing key is never overwritten");
}

#[test]
fn a_piped_script_runs_statements_and_stops_at_the_first_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let script = "CREATE TABLE accounts (id BIGINT PRIMARY KEY,\n  owner TEXT NOT NULL);\n\
                  INSERT INTO accounts VALUES (1, 'alice'), (2, 'bob');\n\
                  SELECT * FROM accounts ORDER BY id;\n\
                  \\dt\n\
                  \\d accounts\n\
                  \\?\n\
                  \\timing on\n\
                  SELECT count(*) AS n FROM accounts;\n\
                  \\timing off\n\
                  SELECT 'untimed' AS u;\n\
                  BEGIN;\nUPDATE accounts SET owner = 'carol' WHERE id = 2;\nDELETE FROM accounts WHERE id = 1;\nCOMMIT;\n\
                  INSERT INTO accounts VALUES (2, 'duplicate');\n\
                  SELECT 'never reached';\n";
    let (ok, out, err) = shell(&["--data-dir", data], script);
    assert!(!ok, "the failing INSERT makes the exit status non-zero");
    assert!(
        out.contains("CREATE TABLE\n(committed in block 1, transaction 0x"),
        "{out}"
    );
    assert!(out.contains("INSERT 2\n(committed in block 2"), "{out}");
    assert!(
        out.contains(" id | owner\n----+-------\n  1 | alice\n  2 | bob\n(2 rows)\n"),
        "{out}"
    );
    assert!(out.contains("List of tables"), "{out}");
    assert!(out.contains("Primary key: id"), "{out}");
    let described: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Table \"public.accounts\""))
        .take_while(|l| !l.starts_with("Primary key"))
        .collect();
    assert!(
        described
            .iter()
            .any(|l| l.contains(" id ") && l.contains("not null")),
        "{described:?}"
    );
    assert!(described.iter().any(|l| l.contains(" owner ")), "{described:?}");
    // `\?` lists the backslash commands; `\timing` times statements while it is on.
    assert!(out.contains("\\timing [on|off]"), "{out}");
    let timed = out
        .split(" n\n---\n 2\n(1 row)\n")
        .nth(1)
        .expect("the timed query's rows");
    assert!(timed.starts_with("Time: ") && timed.contains(" ms\n"), "{out}");
    let after_untimed = out.split(" untimed\n(1 row)\n").nth(1).expect("after untimed");
    assert!(!after_untimed.starts_with("Time: "), "{out}");
    assert!(out.contains("UPDATE 1\nDELETE 1\n(committed in block 3"), "{out}");
    assert!(
        err.contains("ERROR:  duplicate key value violates unique constraint \"accounts_pkey\""),
        "{err}"
    );
    assert!(
        err.contains("failed in block 4; none of its statements were applied"),
        "{err}"
    );
    assert!(!out.contains("never reached"), "{out}");
    assert!(
        dir.path().join("data").join("keys").join("default.key").exists(),
        "the shell created its key"
    );

    // The state survives: a second shell on the same directory sees it.
    let (ok, out, err) = shell(&["--data-dir", data, "-c", "SELECT owner FROM accounts"], "");
    assert!(ok, "{err}");
    assert!(out.contains("carol"), "{out}");
    let (ok, out, err) = shell(&["--data-dir", data], "\\nonsense\nSELECT 'never reached';\n");
    assert!(
        !ok,
        "in a script, an unknown backslash command is an error that stops it"
    );
    assert!(err.contains("invalid command \\nonsense"), "{err}");
    assert!(!out.contains("never reached"), "{out}");
}

#[test]
fn include_and_output_files_and_their_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    std::fs::write(
        path("schema.sql"),
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT);\nINSERT INTO kv VALUES ('a', 1), ('b', 2);\n\\i "
            .to_string()
            + &path("more.sql")
            + "\n",
    )
    .expect("write");
    std::fs::write(path("more.sql"), "INSERT INTO kv VALUES ('c', 3)").expect("write");
    std::fs::write(path("loop.sql"), format!("SELECT 1;\n\\i {}\n", path("loop.sql"))).expect("write");

    // \i runs a file (which may include another); \o sends results to a file until `\o`.
    let script = format!(
        "\\i {schema}\n\\o {out}\nSELECT k, v FROM kv ORDER BY k;\n\\o\nSELECT 'on the terminal' AS t;\n",
        schema = path("schema.sql"),
        out = path("result.txt"),
    );
    let (ok, out, err) = shell(&["--data-dir", data], &script);
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(path("result.txt")).expect("the \\o file");
    assert_eq!(written, " k | v\n---+---\n a | 1\n b | 2\n c | 3\n(3 rows)\n");
    assert!(!out.contains(" a | 1"), "results went to the file: {out}");
    assert!(out.contains("on the terminal"), "{out}");

    // A missing file, a file including itself forever, and `-f` of a missing file: errors that
    // stop the script and leave the state as it was.
    for (script, message) in [
        (
            format!("\\i {}\nSELECT 'never';\n", path("missing.sql")),
            "No such file",
        ),
        (
            format!("\\i {}\nSELECT 'never';\n", path("loop.sql")),
            "more than 16 deep",
        ),
        ("\\i\nSELECT 'never';\n".to_string(), "missing required argument"),
        (
            format!("\\o {}\nSELECT 'never';\n", path("no/such/dir/out.txt")),
            "No such file",
        ),
    ] {
        let (ok, out, err) = shell(&["--data-dir", data], &script);
        assert!(!ok, "{script}: {out}");
        assert!(err.contains(message), "{script}: {err}");
        assert!(!out.contains("never"), "{script}: {out}");
    }
    let (ok, _, err) = shell(&["--data-dir", data, "-f", &path("missing.sql")], "");
    assert!(!ok && err.contains("No such file"), "{err}");
    let (ok, out, err) = shell(&["--data-dir", data, "-f", &path("more.sql")], "");
    assert!(!ok, "the key exists already: {out}");
    assert!(err.contains("duplicate key"), "{err}");
    let (ok, out, _) = shell(&["--data-dir", data, "-c", "SELECT count(*) AS n FROM kv"], "");
    assert!(ok && out.contains(" n\n---\n 3\n"), "{out}");
}

/// Ctrl-C (SIGINT) cancels the running statement, not the shell: the statement fails with
/// psql's message, and a script stops there with a failure status instead of dying by the
/// signal.
#[test]
fn sigint_cancels_the_running_statement() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["shell", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shell");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(
            b"SELECT 'started' AS s;\n\
              SELECT count(*) FROM generate_series(1, 1000000000000) a;\n\
              SELECT 'after' AS s;\n",
        )
        .expect("write");
    drop(stdin);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    while !seen.contains("started") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "the shell ended early: {seen}"
        );
        seen.push_str(&line);
    }
    // The shell listens for SIGINT from its start; the signal cancels the long statement
    // whether it arrives just before it begins or while it runs.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    let output = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error exit, not death by signal: {err}"
    );
    assert!(
        err.contains("ERROR:  canceling statement due to user request"),
        "{err}"
    );
    assert!(
        !rest.contains("after"),
        "the script stopped at the cancelled statement: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_connects_to_a_running_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    chainql(&[
        "init",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--chain-id",
        "shell-test",
    ]);
    let node = NodeProcess::start(&data).await;
    let key = dir.path().join("me.key");
    let key = key.to_str().expect("utf-8").to_string();
    let url = node.url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        shell(
            &["--connect", &url, "--key", &key],
            "CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (7);\nSELECT id * 6 AS answer FROM t;\n\\conninfo\n",
        )
    })
    .await
    .expect("shell");
    assert!(ok, "{err}");
    assert!(out.contains("INSERT 1"), "{out}");
    assert!(out.contains(" answer\n--------\n     42\n(1 row)\n"), "{out}");
    assert!(out.contains("chain shell-test, height 2"), "{out}");
    node.kill();
}

/// The SQL examples of `docs/chainql.md`, in order, run in the shell as written; then `\dC`.
#[test]
fn the_contract_guide_runs_in_the_shell() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/chainql.md"))
        .expect("docs/chainql.md");
    let mut script = String::new();
    let mut in_sql = false;
    for line in guide.lines() {
        match line.trim_end() {
            "```sql" => in_sql = true,
            "```" if in_sql => {
                in_sql = false;
                script.push('\n');
            }
            text if in_sql => {
                script.push_str(text);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(script.contains("CREATE CONTRACT transfer"), "{script}");
    script.push_str("\\dC\n\\dC transfer\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (ok, out, err) = shell(&["--data-dir", data.to_str().expect("utf-8")], &script);
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("EMIT transfer.transferred(0x"), "{out}");
    assert!(out.contains("List of contracts"), "{out}");
    assert!(
        out.contains("Signature: transfer(to_addr TEXT, amount BIGINT)"),
        "{out}"
    );
    assert!(out.contains("pay_and_report"), "{out}");
    // The view's answer, and the rows pay_and_report returned in its receipt.
    assert!(out.contains(" holder "), "{out}");
}

/// `examples/token.sql` runs as the README says; then a second account spends an allowance.
#[test]
fn the_token_example_runs_and_a_second_account_spends_its_allowance() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/token.sql");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let (ok, out, err) = shell(&["--data-dir", data, "-f", example], "");
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("EMIT approve.approval(0x"), "{out}");
    assert!(out.contains("CALL\n"), "{out}");
    assert!(out.contains("transfer_from"), "\\dC lists the contracts: {out}");

    let alice_key = dir.path().join("data").join("keys").join("default.key");
    let alice = chainql(&["keys", "address", "--key", alice_key.to_str().expect("utf-8")]);
    let alice = alice.trim();
    let bob_key = dir.path().join("bob.key");
    let bob_key = bob_key.to_str().expect("utf-8");
    let bob = chainql(&["keys", "new", "--out", bob_key]);
    let bob = bob.trim();

    let as_alice = |sql: &str| shell(&["--data-dir", data, "-c", sql], "");
    let as_bob = |sql: &str| shell(&["--data-dir", data, "--key", bob_key, "-c", sql], "");
    let (ok, _, err) = as_alice(&format!("CALL approve('{bob}', 100)"));
    assert!(ok, "{err}");
    let (ok, out, err) = as_bob(&format!("CALL transfer_from('{alice}', '{bob}', 60)"));
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("EMIT transfer_from.transfer({alice}, {bob}, 60)")),
        "{out}"
    );
    let (ok, _, err) = as_bob(&format!("CALL transfer_from('{alice}', '{bob}', 60)"));
    assert!(!ok);
    assert!(
        err.contains("transfer_from: REQUIRE failed: allowance exceeded"),
        "{err}"
    );
    // Bob may not write the tables directly.
    let (ok, _, err) = as_bob(&format!(
        "UPDATE balances SET balance = 1000000000 WHERE holder = '{bob}'"
    ));
    assert!(!ok);
    assert!(err.contains("permission denied for table balances"), "{err}");

    let (ok, out, err) = as_bob(&format!("CALL balance_of('{bob}')"));
    assert!(ok, "{err}");
    assert!(out.contains("      60\n"), "{out}");
    let (ok, out, err) = as_bob(&format!("CALL allowance_of('{alice}', '{bob}')"));
    assert!(ok, "{err}");
    assert!(out.contains("        40\n"), "{out}");
}

/// The interactive shell on a real terminal (a pseudo-terminal, driven by
/// `server/tests/pty/shell_session.py` with Python's standard `pty` module): Tab completes a
/// system table's name, Ctrl-C cancels the running statement and the shell goes on, and Ctrl-C
/// at the prompt only drops the line being typed.
#[test]
fn on_a_terminal_tab_completes_and_ctrl_c_cancels_the_statement_not_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = std::env::var("CHAINQL_PYTHON").unwrap_or_else(|_| "python3".into());
    let driver = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pty/shell_session.py");
    let output = Command::new(python)
        .arg(driver)
        .arg(env!("CARGO_BIN_EXE_chainql"))
        .arg(dir.path().join("data"))
        .output()
        .expect("python3 drives the terminal");
    let screen = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert!(
        output.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Tab completed `chain.bl` and the query ran.
    assert!(
        screen.contains("FROM chain.blocks;\n n\n---\n 0\n(1 row)\n"),
        "{screen}"
    );
    // Ctrl-C cancelled the long statement; the shell answered the next one.
    assert!(
        screen.contains("a;\n^CERROR:  canceling statement due to user request\nchainql=> "),
        "{screen}"
    );
    // Ctrl-C at the prompt dropped the unfinished line: the next statement ran on its own.
    assert!(
        screen.contains("chainql=> SELECT 'dropped\nchainql=> SELECT 'alive' AS s;\n"),
        "{screen}"
    );
    assert!(screen.contains(" alive\n(1 row)\n"), "{screen}");
    // What was entered is kept in the history file, in order; a line dropped with Ctrl-C is not.
    let history =
        std::fs::read_to_string(dir.path().join("data").join("shell_history")).expect("history file");
    let first = history
        .find("FROM chain.blocks;")
        .expect("history holds the statements");
    let cancelled = history
        .find("generate_series")
        .expect("history holds a cancelled statement");
    let alive = history
        .find("SELECT 'alive' AS s;")
        .expect("history holds the last statement");
    assert!(first < cancelled && cancelled < alive, "{history}");
    assert!(!history.contains("'dropped"), "{history}");
}

/// `chainql simulate` runs the consensus simulation over seeds and reports each run; bad
/// arguments are refused.
#[test]
fn simulate_runs_seeds_and_reports() {
    let out = crate::support::chainql(&[
        "simulate",
        "--seeds",
        "3",
        "--heights",
        "3",
        "--crashes",
        "--partitions",
        "--equivocators",
        "1",
    ]);
    assert_eq!(out.matches(": ok — height ").count(), 3, "{out}");
    assert!(out.contains("3 runs, 0 failed"), "{out}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["simulate", "--validators", "2", "--equivocators", "3"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no more faulty ones"));
}
