//! The read-only page on the metrics listener, loaded in headless Chromium (Debian's package
//! `chromium`, which `.ci/run` installs when it can): it shows the health line, and its
//! screenshot is saved as `target/dashboard.png`. Skipped, saying so, without Chromium.

use crate::common;

use std::process::Command;

use common::*;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_page_shows_the_health_line_in_a_browser() {
    let Some(browser) = chromium() else {
        skip("Chromium is not installed (apt-get install chromium)");
        return;
    };
    let (c, port) = metrics_cluster();
    for name in ["a.bin", "b.bin"] {
        let file = c.dir.path().join(name);
        std::fs::write(&file, random_bytes(300_000)).unwrap();
        c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "2"], 0);
    }
    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=900,700",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = run(&["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains("<h1 id=\"health\">all 2 files at their RD</h1>"),
        "{dom_text}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(dom_text.contains("<svg"), "{dom_text}");
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
