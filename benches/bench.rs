//! `scripts/bench`: peerstash against restic and the disk, on the same random data, in one run,
//! printed as one table with the targets of issue 13. A measurement, not a test: a missed
//! target is printed, never an error; only a real failure (a command failing, restored bytes
//! that differ) exits non-zero.
//!
//! Every cluster is `peerstash::cluster`'s: 127.0.0.1, multicast TTL 0 and a random group, so
//! nothing leaves this machine. The daemons' CPU time and peak RSS come from /proc; the cost of
//! a command that exits (restic, cp, the command line) from getrusage(RUSAGE_CHILDREN) in a
//! process that ran only that command: this program re-run as `bench --measure -- CMD ARGS…`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::sys::time::TimeVal;
use nix::unistd::{sysconf, Pid, SysconfVar};
use peerstash::cluster::{toml_path, Cluster, PeerSpec, Programs};
use peerstash::config::DEFAULT_PROTOCOL;
use peerstash::control::FileState;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

const PEERS: usize = 4;
const RD: u32 = 2;
/// Every peer offers this much: more than a copy of every file the bench backs up.
const QUOTA: &str = "10 GiB";
/// The watched folders' quiet time: a file is backed up once unchanged this long.
const QUIET: Duration = Duration::from_secs(1);
/// Files written into the watched folder one after another, this far apart.
const SPACING: Duration = Duration::from_millis(100);
/// How often the watched-folder part reads `state --json`.
const STATE_POLL: Duration = Duration::from_millis(25);
/// How long a restarted peer may take to log its scan before the rescan part gives up.
const RESCAN_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

#[derive(Parser)]
#[command(about = "Measure peerstash against restic and the disk (scripts/bench)")]
struct Args {
    /// A run of about a minute: 64 MiB instead of 1 GiB, fewer files.
    #[arg(long)]
    quick: bool,
    /// Run only this part (may be repeated).
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// Unchanged watched files for the startup rescan (default 100000, --quick 10000).
    #[arg(long, value_name = "N")]
    rescan_files: Option<usize>,
    /// Keep the bench's folder (the clusters' configs, catalogs, stores and logs) to profile a
    /// daemon on the same state again; its path is printed at the end.
    #[arg(long)]
    keep: bool,
    /// Given by `cargo bench`; without it (`cargo test --all-targets`) nothing is measured.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// cp of the big file to two files + sync.
    Disk,
    /// Backup and restore of the big file, protocols 1.0 and 2.0.
    Peerstash,
    /// Backup and restore of the big file with restic.
    Restic,
    /// A backup of many small files, peerstash and restic.
    Small,
    /// Latency of a watched folder, from a file's close to its replication.
    Watch,
    /// Startup rescan of a watched folder of unchanged files.
    Rescan,
}

/// How much each part works on.
struct Sizes {
    big: u64,
    small_files: usize,
    watched_files: usize,
    rescan_files: usize,
    /// How long peerstash may take to back the small files up; beyond, its rate is measured on
    /// the files done by then.
    small_budget: Duration,
    /// How long the rescan part may take to back its files up before it is skipped.
    rescan_setup: Duration,
}

impl Sizes {
    fn new(args: &Args) -> Sizes {
        // The bounds keep --quick near a minute and stop a slow build from taking hours; a few
        // hundred files give a steady rate.
        let (big, small_files, watched_files, rescan_files, small_s, setup_s) = if args.quick {
            (64 * MIB, 1_000, 30, 10_000, 15, 60)
        } else {
            (1024 * MIB, 10_000, 200, 100_000, 180, 600)
        };
        Sizes {
            big,
            small_files,
            watched_files,
            rescan_files: args.rescan_files.unwrap_or(rescan_files),
            small_budget: Duration::from_secs(small_s),
            rescan_setup: Duration::from_secs(setup_s),
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "--measure") {
        let command = argv
            .get(2)
            .filter(|a| *a == "--")
            .map_or(&argv[2..], |_| &argv[3..]);
        return measure(command);
    }
    let args = Args::parse_from(argv);
    if !args.bench {
        eprintln!("bench: measures only under `cargo bench` (scripts/bench); nothing to test");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---- Interrupts: every wait looks at this flag, so Ctrl-C unwinds and cleans up ----

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupts() -> anyhow::Result<()> {
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(s, SigHandler::Handler(on_interrupt)) }?;
    }
    Ok(())
}

fn check_interrupted() -> anyhow::Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// Sleeps, unless interrupted.
fn pause(time: Duration) -> anyhow::Result<()> {
    check_interrupted()?;
    std::thread::sleep(time);
    Ok(())
}

// ---- The cost of one command, and of the daemons ----

/// What a command cost: wall time, CPU time (user + system), peak RSS.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

/// `bench --measure -- CMD ARGS…`: runs CMD alone (its stdout to our stderr), then prints its
/// wall seconds, CPU seconds and peak RSS in KiB on stdout; exits as CMD did.
fn measure(command: &[OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("usage: bench --measure -- CMD ARGS…");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let status = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|err| Command::new(program).args(args).stdout(err).status());
    let wall = started.elapsed().as_secs_f64();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot run {}: {e}", program.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let cpu = seconds(u.user_time()) + seconds(u.system_time());
            println!("{wall} {cpu} {}", u.max_rss());
        }
        Err(e) => eprintln!("getrusage: {e}"),
    }
    ExitCode::from(status.code().map_or(1, |c| c as u8))
}

fn seconds(t: TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

fn parse_cost(text: &str) -> anyhow::Result<Cost> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [wall, cpu, rss] = fields[..] else {
        bail!("unexpected output of --measure: {text:?}");
    };
    Ok(Cost {
        wall: Duration::from_secs_f64(wall.parse()?),
        cpu: Duration::from_secs_f64(cpu.parse()?),
        max_rss_kib: rss.parse()?,
    })
}

/// A command line for `sh` that runs `argv`, then `sync` (the time to disk is part of it).
fn then_sync(argv: Vec<OsString>) -> Vec<OsString> {
    let mut all = os(["sh", "-c", "\"$@\" && sync", "sh"]);
    all.extend(argv);
    all
}

fn os<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(items: I) -> Vec<OsString> {
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

fn show(argv: &[OsString]) -> String {
    let words: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
    words.join(" ")
}

/// Runs `sync`: what earlier parts left in the page cache is not written during the next.
fn sync() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    ensure!(status.success(), "sync failed ({status})");
    Ok(())
}

/// Waits for `child` (the leader of its own process group) at most `bound`; kills the group
/// on a timeout (None) or an interrupt (an error).
fn wait_bounded(child: &mut Child, bound: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if interrupted || Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            ensure!(!interrupted, "interrupted");
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemons of a cluster, read from /proc.
struct Daemons(Vec<u32>);

impl Daemons {
    fn of(cluster: &Cluster) -> anyhow::Result<Daemons> {
        let pids = (0..cluster.peers.len()).map(|i| cluster.pid(i));
        let pids: Option<Vec<u32>> = pids.collect();
        Ok(Daemons(
            pids.context("a daemon of the cluster is not running")?,
        ))
    }

    /// User + system time of every daemon so far (`utime`, `stime` of /proc/PID/stat).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let ticks_per_s = sysconf(SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as f64;
        let mut ticks = 0u64;
        for pid in &self.0 {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // After the command name, which is in parentheses and may hold anything: field 3
            // of proc_pid_stat(5) on; utime and stime are fields 14 and 15.
            let after_name = &stat[stat.rfind(')').context("odd /proc/PID/stat")? + 1..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            ticks += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        }
        Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_s))
    }

    /// Each daemon's peak RSS (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> anyhow::Result<Vec<u64>> {
        self.0.iter().map(|pid| vm_hwm_kib(*pid)).collect()
    }

    /// Starts each daemon's peak RSS anew at its RSS now ("5" in /proc/PID/clear_refs), so
    /// the next peak is the next phase's. Best effort: without it the peak is since start.
    fn reset_peak_rss(&self) {
        for pid in &self.0 {
            let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }
}

fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"));
    let kib = line.and_then(|l| l.split_whitespace().nth(1));
    Ok(kib.context("no VmHWM in /proc/PID/status")?.parse()?)
}

// ---- Results ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Disk,
    Peerstash,
    Restic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Copy,
    Backup,
    Restore,
    SmallFiles,
}

/// Peak RSS in KiB per kind of process ("daemons": one each; "cli"; "restic").
type Rss = Vec<(&'static str, Vec<u64>)>;

/// What one timed step cost: every process's CPU time (the command's, and the daemons' over
/// the same time) and peak RSS.
struct Spent {
    wall: Duration,
    cpu: Duration,
    rss: Rss,
    /// False: stopped at its bound; then the cost is the daemons' alone.
    finished: bool,
}

impl Spent {
    /// A command that ran alone: `who` names it in the RSS column.
    fn alone(cost: Cost, who: &'static str) -> Spent {
        Spent {
            wall: cost.wall,
            cpu: cost.cpu,
            rss: vec![(who, vec![cost.max_rss_kib])],
            finished: true,
        }
    }
}

/// One line of the table.
struct Row {
    label: String,
    tool: Tool,
    kind: Kind,
    bytes: u64,
    files: usize,
    spent: Spent,
    /// Printed below the row: what is unusual about the figure.
    note: String,
}

impl Row {
    /// A row of one file of `bytes`.
    fn new(label: String, tool: Tool, kind: Kind, bytes: u64, spent: Spent) -> Row {
        Row {
            label,
            tool,
            kind,
            bytes,
            files: 1,
            spent,
            note: String::new(),
        }
    }

    /// MB/s, or files/s for small files.
    fn rate(&self) -> f64 {
        let secs = self.spent.wall.as_secs_f64();
        match self.kind {
            Kind::SmallFiles => self.files as f64 / secs,
            _ => self.bytes as f64 / 1e6 / secs,
        }
    }

    fn unit(&self) -> &'static str {
        match self.kind {
            Kind::SmallFiles => "files/s",
            _ => "MB/s",
        }
    }

    fn cpu_per_gb(&self) -> Option<f64> {
        let gb = self.bytes as f64 / 1e9;
        (self.bytes > 0).then(|| self.spent.cpu.as_secs_f64() / gb)
    }

    fn daemon_peak_mib(&self) -> Option<f64> {
        let (_, kib) = self.spent.rss.iter().find(|(name, _)| *name == "daemons")?;
        Some(*kib.iter().max()? as f64 / 1024.0)
    }

    fn rss_text(&self) -> String {
        let each = self.spent.rss.iter().map(|(name, kib)| {
            let mib: Vec<String> = kib
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect();
            format!("{name} {}", mib.join("/"))
        });
        each.collect::<Vec<_>>().join(", ")
    }
}

/// Watched-folder latency: per file, replicated - closed - quiet, in seconds.
struct Latency {
    files: usize,
    seconds: Vec<f64>,
}

impl Latency {
    /// The `p` quantile (0-1) of the files replicated, by the nearest-rank method.
    fn quantile(&self, p: f64) -> Option<f64> {
        let mut sorted = self.seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
        sorted.get(rank - 1).copied()
    }
}

enum Rescan {
    Measured {
        files: usize,
        setup: Duration,
        took: Duration,
        paths: u64,
    },
    Skipped {
        files: usize,
        backed_up: usize,
        setup: Duration,
    },
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    latency: Option<Latency>,
    rescan: Option<Rescan>,
}

impl Results {
    fn all(&self, tool: Tool, kind: Kind) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(move |r| r.tool == tool && r.kind == kind)
    }

    fn find(&self, tool: Tool, kind: Kind) -> Option<&Row> {
        self.all(tool, kind).next()
    }

    fn vs_restic(&self, row: &Row) -> Option<f64> {
        let restic = self.find(Tool::Restic, row.kind)?;
        (row.tool == Tool::Peerstash).then(|| row.rate() / restic.rate())
    }

    fn vs_disk(&self, row: &Row) -> Option<f64> {
        let disk = self.find(Tool::Disk, Kind::Copy)?;
        let applies = row.tool == Tool::Peerstash && row.kind == Kind::Backup;
        (applies || row.tool == Tool::Disk).then(|| row.rate() / disk.rate())
    }
}

// ---- The bench ----

/// The bench's temporary folder, programs, and the big file once written.
struct Bench {
    /// Every file of the run is below it (the clusters' folders too); removed at the end.
    tmp: tempfile::TempDir,
    /// The folder, symlinks resolved: the daemons name files this way.
    root: PathBuf,
    sizes: Sizes,
    programs: Programs,
    exe: PathBuf,
    big: Option<BigFile>,
    /// --keep: the clusters' folders stay.
    keep: bool,
}

/// The random file backed up by the disk, peerstash and restic parts.
struct BigFile {
    path: PathBuf,
    bytes: u64,
    sha256: [u8; 32],
}

impl BigFile {
    /// Fails loudly if `copy` differs from the file.
    fn check(&self, copy: &Path, by: &str) -> anyhow::Result<()> {
        let got = sha256_of(copy).with_context(|| format!("reading {}", copy.display()))?;
        ensure!(
            got == self.sha256,
            "{by} restored {} with different bytes (sha256 differs)",
            copy.display()
        );
        Ok(())
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    catch_interrupts()?;
    // Under systemd the daemons would log to the journal; the rescan part reads their logs.
    std::env::remove_var("JOURNAL_STREAM");
    std::env::remove_var("INVOCATION_ID");
    let parts = if args.only.is_empty() {
        Part::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    if parts.contains(&Part::Restic) || parts.contains(&Part::Small) {
        ensure_restic()?;
    }
    let started = Instant::now();
    let mut bench = Bench::new(Sizes::new(&args), args.keep)?;
    eprintln!("bench: working in {}", bench.root.display());
    let big_file_parts = [Part::Disk, Part::Peerstash, Part::Restic];
    if parts.iter().any(|p| big_file_parts.contains(p)) {
        bench.write_big()?;
    }
    let mut results = Results::default();
    for part in parts {
        bench.run_part(part, &mut results)?;
    }
    print_table(&bench, &results);
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    if args.keep {
        let kept = bench.tmp.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    Ok(())
}

/// Installs the Debian package `restic` when it is not on PATH.
fn ensure_restic() -> anyhow::Result<()> {
    if Command::new("restic").arg("version").output().is_ok() {
        return Ok(());
    }
    eprintln!("bench: restic is not installed: apt-get install -y restic");
    let status = Command::new("apt-get")
        .args(["install", "-y", "restic"])
        .status()
        .context("cannot run apt-get")?;
    ensure!(
        status.success(),
        "apt-get install -y restic failed ({status}): install restic, or leave out the restic and small parts (--only)"
    );
    Ok(())
}

impl Bench {
    fn new(sizes: Sizes, keep: bool) -> anyhow::Result<Bench> {
        let tmp = tempfile::Builder::new()
            .prefix("peerstash-bench-")
            .tempdir()?;
        let root = tmp.path().canonicalize()?;
        // The clusters make their folders in here too.
        if let Err(other) = tempfile::env::override_temp_dir(&root) {
            bail!(
                "the temporary folder was already set to {}",
                other.display()
            );
        }
        let programs = Programs::new(
            env!("CARGO_BIN_EXE_peerstashd"),
            env!("CARGO_BIN_EXE_peerstash"),
        );
        Ok(Bench {
            tmp,
            root,
            sizes,
            programs,
            exe: std::env::current_exe()?,
            big: None,
            keep,
        })
    }

    fn run_part(&self, part: Part, results: &mut Results) -> anyhow::Result<()> {
        match part {
            Part::Disk => results.rows.push(self.disk()?),
            Part::Peerstash => {
                for protocol in ["1.0", "2.0"] {
                    results.rows.extend(self.peerstash_file(protocol)?);
                }
            }
            Part::Restic => results.rows.extend(self.restic_file()?),
            Part::Small => results.rows.extend(self.small_files()?),
            Part::Watch => results.latency = Some(self.watch_latency()?),
            Part::Rescan => results.rescan = Some(self.rescan()?),
        }
        Ok(())
    }

    /// Runs `argv` through `bench --measure`, with `env`, after a `sync`; fails if it does not
    /// finish within `bound`.
    fn measured(
        &self,
        argv: &[OsString],
        env: &[(&str, &str)],
        bound: Duration,
    ) -> anyhow::Result<Cost> {
        sync()?;
        let cost = self.measured_within(argv, env, bound)?;
        cost.with_context(|| {
            format!(
                "`{}` did not finish within {} s",
                show(argv),
                bound.as_secs()
            )
        })
    }

    /// Runs `argv` through `bench --measure`, with `env`; None if it did not finish within
    /// `bound` (it is killed).
    fn measured_within(
        &self,
        argv: &[OsString],
        env: &[(&str, &str)],
        bound: Duration,
    ) -> anyhow::Result<Option<Cost>> {
        let out = self.root.join("measure.out");
        let err = self.root.join("measure.err");
        let mut child = Command::new(&self.exe)
            .arg("--measure")
            .arg("--")
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            // Its own group, so a timeout kills the command with it.
            .process_group(0)
            .spawn()
            .context("cannot re-run the bench as --measure")?;
        let Some(status) = wait_bounded(&mut child, bound)? else {
            return Ok(None);
        };
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        ensure!(
            status.success(),
            "`{}` failed ({status}): {}",
            show(argv),
            last_lines(&stderr, 5)
        );
        parse_cost(&fs::read_to_string(&out)?).map(Some)
    }

    /// Writes the big file, once, then syncs.
    fn write_big(&mut self) -> anyhow::Result<()> {
        let path = self.root.join("random.bin");
        let bytes = self.sizes.big;
        eprintln!("bench: writing {} MiB of random data", bytes / MIB);
        let sha256 = write_random_file(&path, bytes)?;
        sync()?;
        self.big = Some(BigFile {
            path,
            bytes,
            sha256,
        });
        Ok(())
    }

    fn big(&self) -> anyhow::Result<&BigFile> {
        self.big.as_ref().context("the big file is not written")
    }

    /// The slowest plausible time for `bytes` (1 MB/s) or `files` (10 files/s), and a minute.
    fn bound(bytes: u64, files: usize) -> Duration {
        Duration::from_secs(60 + bytes / 1_000_000 + files as u64 / 10)
    }

    /// The disk limit: the big file copied to two files, then synced.
    fn disk(&self) -> anyhow::Result<Row> {
        let big = self.big()?;
        let (src, bytes) = (&big.path, big.bytes);
        eprintln!("bench: disk: cp to 2 files + sync");
        let [a, b] = [self.root.join("copy-a"), self.root.join("copy-b")];
        let script = "cp \"$1\" \"$2\" && cp \"$1\" \"$3\" && sync";
        let mut argv = os(["sh", "-c", script, "sh"]);
        argv.extend(os([src, &a, &b]));
        let cost = self.measured(&argv, &[], Self::bound(2 * bytes, 0))?;
        fs::remove_file(a)?;
        fs::remove_file(b)?;
        let label = "disk: cp to 2 files + sync".into();
        let spent = Spent::alone(cost, "cp");
        Ok(Row::new(label, Tool::Disk, Kind::Copy, bytes, spent))
    }

    /// A started cluster of PEERS peers; peer 1 watches `watch` if given.
    /// Stops a part's cluster; with --keep its folder stays (a daemon can be run again on it).
    fn done_with(&self, mut cluster: Cluster) {
        cluster.stop_all();
        if self.keep {
            eprintln!("bench: kept the cluster in {}", cluster.keep().display());
        }
    }

    fn cluster(&self, protocol: &str, watch: Option<&Path>) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new(self.programs.clone(), "cluster-")?;
        for i in 0..PEERS {
            let mut spec = PeerSpec::new(QUOTA).protocol(protocol);
            if let (0, Some(folder)) = (i, watch) {
                spec.extra = format!(
                    "\n[[watch]]\npath = {}\nreplication = {RD}\nquiet = \"{}ms\"\n",
                    toml_path(folder),
                    QUIET.as_millis()
                );
            }
            cluster.add_peer(spec)?;
        }
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Runs `peerstash args…` of peer 1 (then `sync` if `and_sync`) for at most `bound`,
    /// measured with the daemons' CPU time and peak RSS over the same time.
    fn cluster_phase(
        &self,
        cluster: &Cluster,
        args: Vec<OsString>,
        and_sync: bool,
        bound: Duration,
    ) -> anyhow::Result<Spent> {
        let mut argv = os([self.programs.cli.as_os_str(), "--config".as_ref()]);
        argv.push(cluster.peer(0).config.clone().into());
        argv.extend(args);
        if and_sync {
            argv = then_sync(argv);
        }
        sync()?;
        let daemons = Daemons::of(cluster)?;
        daemons.reset_peak_rss();
        let before = daemons.cpu()?;
        let started = Instant::now();
        let cost = self.measured_within(&argv, &[], bound)?;
        let wall = started.elapsed();
        let daemons_cpu = daemons.cpu()? - before;
        let mut rss = vec![("daemons", daemons.peak_rss_kib()?)];
        let Some(cost) = cost else {
            let finished = false;
            let cpu = daemons_cpu;
            return Ok(Spent {
                wall,
                cpu,
                rss,
                finished,
            });
        };
        rss.push(("cli", vec![cost.max_rss_kib]));
        let (wall, cpu, finished) = (cost.wall, cost.cpu + daemons_cpu, true);
        Ok(Spent {
            wall,
            cpu,
            rss,
            finished,
        })
    }

    /// `cluster_phase`, which must finish within `bound`.
    fn cluster_phase_done(
        &self,
        cluster: &Cluster,
        args: Vec<OsString>,
        and_sync: bool,
        bound: Duration,
    ) -> anyhow::Result<Spent> {
        let what = show(&args);
        let spent = self.cluster_phase(cluster, args, and_sync, bound)?;
        let secs = bound.as_secs();
        ensure!(
            spent.finished,
            "`peerstash {what}` did not finish within {secs} s"
        );
        Ok(spent)
    }

    /// Backup of the big file at RD 2 and its restore, on a fresh cluster of `protocol`.
    fn peerstash_file(&self, protocol: &str) -> anyhow::Result<[Row; 2]> {
        let big = self.big()?;
        eprintln!("bench: peerstash {protocol}: backup and restore");
        let cluster = self.cluster(protocol, None)?;
        let timeout = Self::bound(big.bytes, 0);
        let backup = self.cluster_phase_done(&cluster, backup_args(&big.path), false, timeout)?;
        fs::remove_file(&big.path)?;
        let restore_args = os(["restore".as_ref(), big.path.as_os_str()]);
        let restore = self.cluster_phase_done(&cluster, restore_args, true, timeout)?;
        big.check(&big.path, &format!("peerstash {protocol}"))?;
        self.done_with(cluster);
        let row = |kind, what: &str, spent| {
            let label = format!("peerstash {protocol} {what}");
            Row::new(label, Tool::Peerstash, kind, big.bytes, spent)
        };
        Ok([
            row(Kind::Backup, "backup", backup),
            row(Kind::Restore, "restore + sync", restore),
        ])
    }

    /// `restic ARGS…` on the repository `repo` (then `sync` if `and_sync`), measured.
    fn restic(
        &self,
        repo: &Path,
        args: Vec<OsString>,
        and_sync: bool,
        bound: Duration,
    ) -> anyhow::Result<Cost> {
        let cache = self.root.join("restic-cache");
        let mut argv = os(["restic", "--quiet"]);
        argv.extend(os([
            "--repo".as_ref(),
            repo.as_os_str(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
        ]));
        argv.extend(args);
        if and_sync {
            argv = then_sync(argv);
        }
        self.measured(&argv, &[("RESTIC_PASSWORD", "peerstash-bench")], bound)
    }

    /// restic's backup of the big file and its restore to another folder.
    fn restic_file(&self) -> anyhow::Result<[Row; 2]> {
        let big = self.big()?;
        eprintln!("bench: restic: backup and restore");
        let repo = self.root.join("restic-file");
        let timeout = Self::bound(big.bytes, 0);
        self.restic(&repo, os(["init"]), false, timeout)?;
        let backup_args = os(["backup".as_ref(), big.path.as_os_str()]);
        let backup = self.restic(&repo, backup_args, false, timeout)?;
        let target = self.root.join("restic-restored");
        let mut restore_args = os(["restore", "latest", "--target"]);
        restore_args.push(target.clone().into());
        let restore = self.restic(&repo, restore_args, true, timeout)?;
        big.check(&target.join(big.path.strip_prefix("/")?), "restic")?;
        fs::remove_dir_all(&target)?;
        fs::remove_dir_all(&repo)?;
        let row = |kind, what: &str, cost| {
            let label = format!("restic {what}");
            Row::new(
                label,
                Tool::Restic,
                kind,
                big.bytes,
                Spent::alone(cost, "restic"),
            )
        };
        Ok([
            row(Kind::Backup, "backup", backup),
            row(Kind::Restore, "restore + sync", restore),
        ])
    }

    /// A backup of many small files in ~100 folders: peerstash (a fresh cluster), then restic.
    fn small_files(&self) -> anyhow::Result<[Row; 2]> {
        let n = self.sizes.small_files;
        let dir = self.root.join("small");
        eprintln!("bench: small files: writing {n}");
        let bytes = write_small_files(&dir, n, 100, 1_000..=8_000)?;
        Ok([
            self.peerstash_small(&dir, n)?,
            self.restic_small(&dir, n, bytes)?,
        ])
    }

    /// `peerstash backup DIR`, stopped at the small-files budget if it takes longer: then the
    /// rate is that of the files replicated by then.
    fn peerstash_small(&self, dir: &Path, n: usize) -> anyhow::Result<Row> {
        let protocol = DEFAULT_PROTOCOL;
        let budget = self.sizes.small_budget;
        eprintln!(
            "bench: small files: peerstash {protocol} backup (at most {} s)",
            budget.as_secs()
        );
        let cluster = self.cluster(protocol, None)?;
        let spent = self.cluster_phase(&cluster, backup_args(dir), false, budget)?;
        let state = cluster.peer(0).try_state()?;
        self.done_with(cluster);
        let done: Vec<&FileState> = state
            .files
            .iter()
            .filter(|f| f.path.starts_with(dir) && replicated(f))
            .collect();
        let note = if spent.finished {
            ensure!(
                done.len() == n,
                "peerstash backed up {} of the {n} small files at RD {RD}",
                done.len()
            );
            String::new()
        } else {
            format!(
                "stopped at {} s: {} of {n} files done",
                budget.as_secs(),
                done.len()
            )
        };
        let label = format!("peerstash {protocol} {n} small files");
        let bytes = done.iter().map(|f| f.size).sum();
        Ok(Row {
            files: done.len(),
            note,
            ..Row::new(label, Tool::Peerstash, Kind::SmallFiles, bytes, spent)
        })
    }

    /// `restic backup DIR` into a new repository.
    fn restic_small(&self, dir: &Path, n: usize, bytes: u64) -> anyhow::Result<Row> {
        eprintln!("bench: small files: restic backup");
        let repo = self.root.join("restic-small");
        let bound = Self::bound(bytes, n);
        self.restic(&repo, os(["init"]), false, bound)?;
        let args = os(["backup".as_ref(), dir.as_os_str()]);
        let cost = self.restic(&repo, args, false, bound)?;
        fs::remove_dir_all(&repo)?;
        let label = format!("restic {n} small files");
        let spent = Spent::alone(cost, "restic");
        Ok(Row {
            files: n,
            ..Row::new(label, Tool::Restic, Kind::SmallFiles, bytes, spent)
        })
    }

    /// Files written one by one into a watched folder: from each one's close to its last chunk
    /// at RD 2, less the quiet time.
    fn watch_latency(&self) -> anyhow::Result<Latency> {
        let n = self.sizes.watched_files;
        let dir = self.root.join("watched");
        fs::create_dir_all(&dir)?;
        eprintln!(
            "bench: watched folder: {n} files, {} ms apart",
            SPACING.as_millis()
        );
        let cluster = self.cluster(DEFAULT_PROTOCOL, Some(&dir))?;
        let (tx, rx) = mpsc::channel();
        let seen = std::thread::scope(|s| {
            let writer = s.spawn(|| write_spaced(&dir, n, tx));
            let seen = watch_replication(&cluster, rx, n);
            let written = writer.join().expect("the writer does not panic");
            written.and(seen)
        })?;
        self.done_with(cluster);
        let seconds = seen.values().map(|(closed, replicated)| {
            (*replicated - *closed).as_secs_f64() - QUIET.as_secs_f64()
        });
        Ok(Latency {
            files: n,
            seconds: seconds.collect(),
        })
    }

    /// Startup rescan of a watched folder of unchanged files: peer 1 backs them up, stops and
    /// starts again; the time from its spawn to its `scanned` line.
    fn rescan(&self) -> anyhow::Result<Rescan> {
        let n = self.sizes.rescan_files;
        let dir = self.root.join("rescan");
        eprintln!("bench: rescan: writing {n} tiny files");
        write_small_files(&dir, n, n.div_ceil(1_000), 1..=64)?;
        let started = Instant::now();
        let mut cluster = self.cluster(DEFAULT_PROTOCOL, Some(&dir))?;
        // `backup DIR` alongside the watcher's queue: the faster way to the first backup.
        let _ = cluster.peer(0).cli(backup_args(&dir));
        let backed_up = wait_backed_up(&cluster, &dir, n, self.sizes.rescan_setup)?;
        let setup = started.elapsed();
        if backed_up < n {
            self.done_with(cluster);
            return Ok(Rescan::Skipped {
                files: n,
                backed_up,
                setup,
            });
        }
        eprintln!(
            "bench: rescan: backed up in {:.0} s; restarting peer 1",
            setup.as_secs_f64()
        );
        cluster.stop(0);
        let log_start = cluster.peer(0).log().len();
        let spawned = Instant::now();
        cluster.spawn(0)?;
        let paths = loop {
            let log = cluster.peer(0).log();
            if let Some(paths) = scanned_paths(&log[log_start.min(log.len())..], &dir) {
                break paths;
            }
            ensure!(
                spawned.elapsed() < RESCAN_TIMEOUT,
                "restarted peer 1 did not log its scan of {} within {} s",
                dir.display(),
                RESCAN_TIMEOUT.as_secs()
            );
            pause(Duration::from_millis(5))?;
        };
        let took = spawned.elapsed();
        self.done_with(cluster);
        Ok(Rescan::Measured {
            files: n,
            setup,
            took,
            paths,
        })
    }
}

// ---- Data ----

/// Writes `bytes` random bytes to `path` (synced); their sha256.
fn write_random_file(path: &Path, bytes: u64) -> anyhow::Result<[u8; 32]> {
    let mut file = File::create(path)?;
    let mut hash = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    let mut rng = rand::thread_rng();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n])?;
        hash.update(&block[..n]);
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(hash.finalize().into())
}

fn sha256_of(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(hash.finalize().into());
        }
        hash.update(&block[..n]);
    }
}

/// `n` files of random sizes in `sizes` and random bytes, spread over `folders` subfolders of
/// `dir`; their total size.
fn write_small_files(
    dir: &Path,
    n: usize,
    folders: usize,
    sizes: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<u64> {
    let mut rng = rand::thread_rng();
    let mut total = 0;
    for i in 0..n {
        let folder = dir.join(format!("d{:03}", i % folders));
        if i < folders {
            fs::create_dir_all(&folder)?;
        }
        let mut bytes = vec![0u8; rng.gen_range(sizes.clone())];
        rng.fill_bytes(&mut bytes);
        fs::write(folder.join(format!("f{i:06}")), &bytes)?;
        total += bytes.len() as u64;
    }
    sync()?;
    Ok(total)
}

/// Writes `n` small files into `dir`, SPACING apart; sends each path with its close time.
fn write_spaced(
    dir: &Path,
    n: usize,
    closed: mpsc::Sender<(PathBuf, Instant)>,
) -> anyhow::Result<()> {
    let mut rng = rand::thread_rng();
    let start = Instant::now();
    for i in 0..n {
        let due = start + SPACING * i as u32;
        pause(due.saturating_duration_since(Instant::now()))?;
        let mut bytes = vec![0u8; rng.gen_range(1_000..=8_000)];
        rng.fill_bytes(&mut bytes);
        let path = dir.join(format!("w{i:04}"));
        fs::write(&path, &bytes)?;
        // The receiver is gone only when the watch gave up.
        let _ = closed.send((path, Instant::now()));
    }
    Ok(())
}

/// `backup PATH --replication RD`.
fn backup_args(path: &Path) -> Vec<OsString> {
    let mut args = os(["backup".as_ref(), path.as_os_str()]);
    args.extend(os(["--replication".to_owned(), RD.to_string()]));
    args
}

/// Every chunk of the version at its desired RD.
fn replicated(f: &FileState) -> bool {
    f.complete
        && !f.chunks.is_empty()
        && f.chunks
            .iter()
            .all(|c| c.perceived_rd >= u32::from(f.desired_rd))
}

/// Reads peer 1's state every STATE_POLL until all `n` files written are replicated (bounded);
/// each file's close time and the time it was first seen replicated.
fn watch_replication(
    cluster: &Cluster,
    closed: mpsc::Receiver<(PathBuf, Instant)>,
    n: usize,
) -> anyhow::Result<HashMap<PathBuf, (Instant, Instant)>> {
    let deadline = Instant::now() + SPACING * n as u32 + QUIET + Duration::from_secs(60);
    let mut written = HashMap::new();
    let mut seen = HashMap::new();
    while seen.len() < n && Instant::now() < deadline {
        written.extend(closed.try_iter());
        let state = cluster.peer(0).try_state()?;
        let now = Instant::now();
        for f in state.files.iter().filter(|f| replicated(f)) {
            if let Some(closed_at) = written.get(&f.path) {
                seen.entry(f.path.clone()).or_insert((*closed_at, now));
            }
        }
        pause(STATE_POLL)?;
    }
    Ok(seen)
}

/// Waits until peer 1 shows the `n` files below `dir` replicated and its queue empty, at most
/// `bound`; how many it shows replicated.
fn wait_backed_up(
    cluster: &Cluster,
    dir: &Path,
    n: usize,
    bound: Duration,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    // `state --json` of many files is not free: do not slow the backup down much.
    let poll = Duration::from_millis(500 + n as u64 / 20);
    let mut told = Instant::now();
    loop {
        let state = cluster.peer(0).try_state()?;
        let done = state
            .files
            .iter()
            .filter(|f| f.path.starts_with(dir) && replicated(f))
            .count();
        let waited = started.elapsed();
        // Backed up, and the watcher's queue worked through (the events of the files' writing
        // queued each one): the folder is at rest, as the rescan measured next expects.
        if (done >= n && state.queue_length == 0) || waited >= bound {
            return Ok(done);
        }
        if told.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "bench: rescan: {done} of {n} files backed up after {:.0} s",
                waited.as_secs_f64()
            );
            told = Instant::now();
        }
        pause(poll)?;
    }
}

/// N in the log line `scanned <folder>: N paths to look at`, if `log` has it.
fn scanned_paths(log: &str, folder: &Path) -> Option<u64> {
    let head = format!("scanned {}: ", folder.display());
    log.lines().find_map(|line| {
        let rest = &line[line.find(&head)? + head.len()..];
        let (count, tail) = rest.split_once(' ')?;
        tail.starts_with("paths to look at")
            .then(|| count.parse().ok())?
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

// ---- The table ----

/// A ratio as "0.42x" ("0.004x" when small), or "-".
fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r < 0.1 => format!("{r:.3}x"),
        Some(r) => format!("{r:.2}x"),
        None => "-".into(),
    }
}

fn print_table(bench: &Bench, results: &Results) {
    println!();
    println!(
        "peerstash bench: {PEERS} peers on 127.0.0.1 at RD {RD}, big file {} MiB, {} CPUs, MB = 10^6 bytes",
        bench.sizes.big / MIB,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>17} {:>9} {:>8} {:>9}  peak RSS (MiB)",
        "", "figure", "vs restic", "vs disk", "CPU s/GB"
    );
    for row in &results.rows {
        println!(
            "{:<34} {:>17} {:>9} {:>8} {:>9}  {}",
            row.label,
            format!("{:.1} {}", row.rate(), row.unit()),
            ratio(results.vs_restic(row)),
            ratio(results.vs_disk(row)),
            row.cpu_per_gb().map_or("-".into(), |c| format!("{c:.2}")),
            row.rss_text()
        );
        if !row.note.is_empty() {
            println!("{:<34} ({})", "", row.note);
        }
    }
    println!();
    print_latency(results.latency.as_ref());
    print_rescan(results.rescan.as_ref());
    println!();
    print_targets(bench, results);
}

fn print_latency(latency: Option<&Latency>) {
    let Some(l) = latency else { return };
    let missing = l.files - l.seconds.len();
    let (Some(p50), Some(p99)) = (l.quantile(0.5), l.quantile(0.99)) else {
        println!("watched folder: none of {} files replicated", l.files);
        return;
    };
    println!(
        "watched folder ({} files, quiet {} s): replicated - closed - quiet: p50 {p50:.3} s, p99 {p99:.3} s{}",
        l.files,
        QUIET.as_secs_f64(),
        if missing > 0 { format!(" ({missing} never replicated)") } else { String::new() }
    );
}

fn print_rescan(rescan: Option<&Rescan>) {
    match rescan {
        None => {}
        Some(Rescan::Measured { files, setup, took, paths }) => println!(
            "startup rescan of {files} unchanged watched files: {:.3} s, {paths} paths to look at (first backup took {:.0} s)",
            took.as_secs_f64(),
            setup.as_secs_f64()
        ),
        Some(Rescan::Skipped { files, backed_up, setup }) => println!(
            "startup rescan of {files} watched files: skipped, only {backed_up} were backed up after {:.0} s (try --rescan-files with fewer)",
            setup.as_secs_f64()
        ),
    }
}

/// One line per target of issue 13: met or not, and the figure.
fn print_targets(bench: &Bench, results: &Results) {
    println!("targets (issue 13):");
    for (kind, what) in [(Kind::Backup, "backup"), (Kind::Restore, "restore")] {
        for row in results.all(Tool::Peerstash, kind) {
            let r = results.vs_restic(row);
            let target = format!("{what} >= 1.0x restic ({})", row.label);
            target_line(&target, r.map(|r| r >= 1.0), ratio(r));
        }
    }
    let small = results.find(Tool::Peerstash, Kind::SmallFiles);
    let r = small.and_then(|row| results.vs_restic(row));
    target_line(
        "small files >= 0.5x restic's files/s",
        r.map(|r| r >= 0.5),
        ratio(r),
    );
    let size = bench.sizes.big / MIB;
    for row in results.all(Tool::Peerstash, Kind::Backup) {
        let peak = row.daemon_peak_mib();
        let target = format!("daemon peak RSS < 48 MiB ({}, {size} MiB)", row.label);
        let figure = peak.map_or(String::new(), |p| format!("{p:.1} MiB"));
        target_line(&target, peak.map(|p| p < 48.0), figure);
    }
    let target = "rescan of 100k unchanged files < 2 s";
    match &results.rescan {
        Some(Rescan::Measured {
            files, took, paths, ..
        }) => {
            let s = took.as_secs_f64();
            let figure = format!("{s:.3} s, {paths} paths to look at");
            target_line(&format!("{target} ({files} files)"), Some(s < 2.0), figure);
        }
        _ => target_line(target, None, String::new()),
    }
    let p50 = results.latency.as_ref().and_then(|l| l.quantile(0.5));
    let figure = p50.map_or(String::new(), |p| format!("quiet + {p:.3} s"));
    target_line("watched p50 < quiet + 0.5 s", p50.map(|p| p < 0.5), figure);
}

fn target_line(target: &str, met: Option<bool>, figure: String) {
    match met {
        Some(true) => println!("  {target:<58} {:<12} {figure}", "met"),
        Some(false) => println!("  {target:<58} {:<12} {figure}", "not met"),
        None => println!("  {target:<58} not measured"),
    }
}
