//! The admin's command line at its edges: a typo in the config after a reload, and a reader
//! that stops reading (`peerstash state | head -1`).

use crate::common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::*;
use peerstash::control::{Amount, Nothing, PeerState, Reply, StatusReport};

/// `script` (util-linux) is there to give a command a terminal.
fn have_script() -> bool {
    Command::new("script").arg("--version").output().is_ok()
}

/// Runs `peerstash ARGS` against peer 0 of `c` on a terminal (`script`), with `$PAGER` set to
/// `pager`: its exit status and what it showed there.
fn on_a_terminal(c: &Cluster, args: &str, pager: &str) -> (Option<i32>, String) {
    let command = format!(
        "{PEERSTASH} --config {} {args}",
        c.peers[0].config.display()
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("PAGER", pager)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_broken_config_leaves_the_commands_working_with_a_warning() {
    let c = Cluster::start(&["1 MiB", "1 MiB"]);
    c.rewrite_config(0, "nonsense", "");
    c.reload(0);
    assert!(
        wait_until(std::time::Duration::from_secs(10), || c
            .full_log(0)
            .contains("reload refused")),
        "{}",
        c.log(0)
    );
    let out = c.cli(0, &["state"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("storage.quota"), "{stderr}");
    assert!(
        stderr.contains("the daemon keeps the config it runs with"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one warning: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("peer 1"));
    // Still served on the running config's quota.
    assert!(String::from_utf8_lossy(&out.stdout).contains("of 1048576 bytes"));

    // Not even TOML: the socket is the default one, which this peer does not use.
    std::fs::write(&c.peers[0].config, "[peer\n").unwrap();
    let out = c.cli(0, &["state"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("/run/peerstash/control.sock"), "{stderr}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let c = Cluster::start(&["0", "100 MiB"]);
    let base = c.dir.path().canonicalize().unwrap().join("many");
    std::fs::create_dir(&base).unwrap();
    // More lines than a pipe holds (64 KiB): a write after the reader left fails.
    for i in 0..2000 {
        let f = base.join(format!("f{i}"));
        std::fs::write(&f, [(i % 256) as u8; 10]).unwrap();
    }
    c.cli_ok(0, &["backup", base.to_str().unwrap(), "-r", "1"], 0);
    let mut child = Command::new(PEERSTASH)
        .arg("--config")
        .arg(&c.peers[0].config)
        .arg("state")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe (`| head -c1`).
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    stdout.read_exact(&mut one).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "quietly: {stderr}");
    assert_eq!(
        status.signal(),
        Some(13),
        "ended by SIGPIPE, as `head` expects: {status:?}"
    );
}

#[test]
fn status_says_in_one_line_that_all_is_well_or_names_the_files_below_their_rd() {
    let spec = PeerSpec {
        peer_extra: "holder_timeout = \"3s\"\n".into(),
        ..PeerSpec::new("100MB").protocol("2.0")
    };
    let mut c = Cluster::start_specs(vec![spec; 4]);
    let base = c.dir.path().canonicalize().unwrap();
    let names = ["alpha.txt", "beta.txt", "gamma.txt"];
    for name in names {
        let f = base.join(name);
        std::fs::write(&f, random_bytes(100_000)).unwrap();
        c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "3"], 0);
    }
    // Every file at its RD but no catalog snapshot yet (taken within a minute of a backup by
    // hand): 7. Once one is at its RD: 0.
    let out = c.cli_ok(0, &["status"], 7);
    assert!(out.starts_with("all 3 files at their RD\n"), "{out}");
    assert!(
        out.contains("not healthy: no catalog snapshot at its RD"),
        "{out}"
    );
    c.cli_ok(0, &["snapshot"], 0);
    let out = c.cli_ok(0, &["status"], 0);
    assert!(out.starts_with("all 3 files at their RD\n"), "{out}");
    assert!(out.contains("peers: 3 heard, 0 lost"), "{out}");

    // A holder dies for good: once it is counted lost, every file is below RD 3 (no fourth
    // peer to take its copies), and each is named.
    c.kill(3);
    let degraded = wait_until(std::time::Duration::from_secs(30), || {
        c.cli(0, &["status"]).status.code() == Some(3)
    });
    assert!(degraded, "{}", c.dump());
    let out = c.cli_ok(0, &["status"], 3);
    assert!(out.starts_with("3 files degraded, 0 at risk\n"), "{out}");
    for name in names {
        assert!(
            out.contains(&base.join(name).display().to_string()),
            "{out}"
        );
    }
    assert!(out.contains("1 lost"), "{out}");
    let json = c.cli_ok(0, &["status", "--json"], 3);
    let v: StatusReport = parse_json(&json);
    assert_eq!(v.degraded.len(), 3, "{json}");
}

#[test]
fn a_backup_and_a_restore_on_a_terminal_show_a_progress_bar() {
    if !have_script() {
        skip("`script` (util-linux) is needed to give the command a terminal");
        return;
    }
    let c = Cluster::start(&["0", "100 MiB", "100 MiB"]);
    let file = c.dir.path().canonicalize().unwrap().join("big.bin");
    std::fs::write(&file, random_bytes(6_000_000)).unwrap();
    let terminal = |args: &str| on_a_terminal(&c, args, "cat");
    let (code, screen) = terminal(&format!("backup {} -r 2", file.display()));
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("backup [") && screen.contains("MiB/5.72 MiB"),
        "{screen}"
    );
    assert!(screen.contains("ETA"), "{screen}");
    std::fs::remove_file(&file).unwrap();
    let (code, screen) = terminal(&format!("restore {}", file.display()));
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("restore [") && screen.contains("ETA"),
        "{screen}"
    );
    // Without a terminal (pipes, here), no bar: only the lines (and, after 5 s, a plain line
    // on stderr now and then).
    std::fs::write(&file, random_bytes(1_000_000)).unwrap();
    let out = c.cli(0, &["backup", file.to_str().unwrap(), "-r", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_progress_events_then_the_outcome() {
    let c = Cluster::start(&["0", "100 MiB", "100 MiB"]);
    let file = c.dir.path().canonicalize().unwrap().join("f.bin");
    std::fs::write(&file, random_bytes(1_000_000)).unwrap();
    let out = c.cli_ok(
        0,
        &["backup", file.to_str().unwrap(), "-r", "2", "--json"],
        0,
    );
    let lines: Vec<Reply<Nothing>> = json_lines(&out);
    let (last, progress) = lines.split_last().unwrap();
    assert!(matches!(last, Reply::Done { code: 0, .. }), "{out}");
    let amounts: Vec<Amount> = (progress.iter())
        .filter_map(|p| match p {
            Reply::Progress { amount, .. } => *amount,
            Reply::Done { .. } => panic!("a final line before the last: {out}"),
        })
        .collect();
    assert!(!amounts.is_empty(), "{out}");
    assert!(amounts.windows(2).all(|w| w[0].done <= w[1].done), "{out}");
    assert!(amounts.iter().any(|a| a.total == 1_000_000), "{out}");
}

#[test]
fn state_is_limited_to_a_path_and_goes_through_the_pager_on_a_terminal() {
    let c = Cluster::start(&["0", "100 MiB", "100 MiB"]);
    let root = c.dir.path().canonicalize().unwrap();
    // `a` and `ab`: a path is limited by whole names, `a` does not take in `ab`.
    for (dir, name) in [
        ("a", "one.bin"),
        ("a/deeper", "two.bin"),
        ("ab", "three.bin"),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        let file = root.join(dir).join(name);
        std::fs::write(&file, random_bytes(70_000)).unwrap();
        c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "2"], 0);
    }
    let a = root.join("a");
    let out = c.cli_ok(0, &["state", a.to_str().unwrap()], 0);
    assert!(out.contains("one.bin") && out.contains("two.bin"), "{out}");
    assert!(!out.contains("three.bin"), "{out}");
    assert!(
        out.contains("at or below") && out.contains("(2 versions)"),
        "{out}"
    );
    assert!(
        !out.contains("hosted ("),
        "hosted chunks have no path: {out}"
    );
    let json = c.cli_ok(0, &["state", "--json", a.to_str().unwrap()], 0);
    let v: PeerState = parse_json(&json);
    assert_eq!(v.files.len(), 2, "{json}");
    // The whole report still lists all three and the hosted chunks (none here: peer 1 hosts
    // nothing, its quota is 0).
    let all = c.cli_ok(0, &["state"], 0);
    assert!(
        all.contains("three.bin") && all.contains("hosted (0 chunks)"),
        "{all}"
    );

    if !have_script() {
        skip("the pager part: `script` (util-linux) is needed to give the command a terminal");
        return;
    }
    let paged = root.join("paged.txt");
    let pager = format!("cat > {}", paged.display());
    let terminal = |args: &str| on_a_terminal(&c, args, &pager);
    let (code, screen) = terminal("state");
    assert_eq!(code, Some(0), "{screen}");
    let text = std::fs::read_to_string(&paged).unwrap();
    assert!(
        text.contains("three.bin") && text.contains("hosted (0 chunks)"),
        "{text}"
    );
    assert!(
        !screen.contains("three.bin"),
        "the pager had the report: {screen}"
    );
    std::fs::remove_file(&paged).unwrap();
    let (code, screen) = terminal("state --no-pager");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("three.bin"), "{screen}");
    assert!(!paged.exists(), "--no-pager ran the pager");
}
