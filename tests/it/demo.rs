//! The README's first command: `peerstash demo` runs its cluster, restores every file and
//! cleans up.

use crate::common;

#[test]
fn demo_backs_up_loses_a_peer_and_restores_everything() {
    let out = std::process::Command::new(common::PEERSTASH)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("identical to the original").count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("was not backed up"), "{stdout}");
    assert!(stdout.contains("version 1 is gone"), "{stdout}");
    let folder = stdout
        .lines()
        .find_map(|l| l.strip_suffix(" is removed."))
        .and_then(|l| l.rsplit(' ').next())
        .expect("the demo names its folder");
    assert!(
        !std::path::Path::new(folder).exists(),
        "{folder} left behind"
    );
}
