//! Durability of the `specie` program, tested as a user would: `specie run --data-dir` killed
//! with SIGKILL mid-workload at several moments, each time checked with `specie audit`
//! (invariants hold, every acknowledged payment is committed in the journal), then run again
//! to continue from the recovered state; and data directories with a corrupt, truncated or
//! missing journal or a manifest of another format version, which both commands refuse with
//! an error naming the file, leaving the files as they were.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Moments after the start of a run at which it is killed: early, mid and late in its workload.
const KILL_AFTER_MS: [u64; 3] = [1_500, 2_500, 4_000];
/// A generous bound on waiting for a run to acknowledge its first payment (debug build, busy
/// machine): a run that never gets there fails the test instead of hanging it.
const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(60);

fn specie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_specie"))
}

/// The embedded default config, shrunk to 400 wallets so that a debug build is quick.
fn write_small_config(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml"))
            .expect("read config/local.toml");
    assert!(
        text.contains("\nwallets = 10000\n"),
        "config/local.toml sets `wallets = 10000`"
    );
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        text.replace("\nwallets = 10000\n", "\nwallets = 400\n"),
    )
    .expect("write config");
    path
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Starts `specie run` on the data directory under a 30 s workload, logging acknowledgements.
fn start_run(work: &Path, config: &Path, data: &Path, acks: &Path, stderr: &Path) -> Child {
    specie()
        .args(["run", "--duration", "30"])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--ack-log")
        .arg(acks)
        .current_dir(work)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).expect("stderr file"))
        .spawn()
        .expect("start specie run")
}

/// Runs `specie audit` on the data directory with the acknowledgement log; returns its JSON.
fn audit(data: &Path, acks: &Path, json: &Path) -> Value {
    let output = specie()
        .arg("audit")
        .arg("--data-dir")
        .arg(data)
        .arg("--acks")
        .arg(acks)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run specie audit");
    assert!(
        output.status.success(),
        "specie audit failed: {}",
        describe(&output)
    );
    read_json(json)
}

#[test]
fn kill_9_at_several_moments_loses_no_acknowledged_payment_and_a_rerun_continues() {
    let work = tempfile::tempdir().expect("temp dir");
    let config = write_small_config(work.path());
    let data = work.path().join("d");
    let acks = work.path().join("acks.txt");
    let journal = data.join("journal.redb");
    let mut committed_before = 0;
    let mut checked_before = 0;

    for (kill, after_ms) in KILL_AFTER_MS.into_iter().enumerate() {
        let stderr = work.path().join(format!("run-{kill}.err"));
        let acks_at_start = lines_of(&acks);
        let started = Instant::now();
        let mut child = start_run(work.path(), &config, &data, &acks, &stderr);
        // Kill only once this run is past genesis and acknowledging payments, at the chosen
        // moment or as soon after it as that is true.
        while lines_of(&acks) == acks_at_start {
            if let Some(status) = child.try_wait().expect("poll the run") {
                panic!(
                    "run {kill} exited ({status}) before acknowledging a payment: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < FIRST_ACK_WAIT_MAX,
                "run {kill} acknowledged nothing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(after_ms).saturating_sub(started.elapsed()));
        assert!(
            child.try_wait().expect("poll the run").is_none(),
            "run {kill} is still running when killed"
        );
        child.kill().expect("SIGKILL the run");
        child.wait().expect("reap the run");

        let before = std::fs::read(&journal).expect("read the journal");
        let report = audit(&data, &acks, &work.path().join(format!("a-{kill}.json")));
        assert_eq!(
            std::fs::read(&journal).expect("read the journal"),
            before,
            "the audit left the journal unchanged"
        );
        let context = format!("kill {kill} at {:?}: {report:#}", started.elapsed());
        assert_eq!(report["ok"], true, "{context}");
        for (name, verdict) in report["invariants"].as_object().expect("invariants") {
            assert_eq!(verdict, "ok", "invariant {name}; {context}");
        }
        assert_eq!(report["invariants"]["no_lost_ack"], "ok", "{context}");
        let checked = report["acknowledged"]["checked"]
            .as_u64()
            .expect("acknowledged.checked");
        assert_eq!(report["acknowledged"]["missing"], 0, "{context}");
        assert!(
            checked > checked_before,
            "this run's acknowledgements were checked too; {context}"
        );
        assert_eq!(
            checked as usize,
            lines_of(&acks),
            "every logged acknowledgement was checked; {context}"
        );
        let committed = report["committed"].as_u64().expect("committed");
        assert!(
            committed > committed_before,
            "each run committed more on top of the last; {context}"
        );
        (checked_before, committed_before) = (checked, committed);
    }

    // Run again on the same directory, with its own config: it continues.
    let json = work.path().join("r.json");
    let output = specie()
        .args(["run", "--duration", "2"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .arg(&json)
        .current_dir(work.path())
        .output()
        .expect("run specie again");
    assert!(
        output.status.success(),
        "the continuing run failed: {}",
        describe(&output)
    );
    let report = read_json(&json);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["durable"], true, "{report:#}");
    assert_eq!(
        report["run"],
        KILL_AFTER_MS.len() as u64 + 1,
        "the fourth run on the directory: {report:#}"
    );
    assert!(
        report["committed"].as_u64().expect("committed") > 0,
        "{report:#}"
    );

    let after = audit(&data, &acks, &work.path().join("a-final.json"));
    assert_eq!(after["ok"], true, "{after:#}");
    assert!(
        after["committed"].as_u64().expect("committed") > committed_before,
        "the continuing run added to the recovered sagas: {after:#}"
    );
}

/// What a damaged data directory does to `specie run` and `specie audit`.
struct Damage {
    /// What was done to the directory.
    name: &'static str,
    /// The file the error must name.
    names_file: &'static str,
    /// Words of which the error must contain one.
    says_one_of: &'static [&'static str],
}

/// Runs both commands on a damaged directory: each exits non-zero and says what is wrong with
/// which file, and neither changes the files.
fn assert_refused(data: &Path, damage: &Damage) {
    let files = ["journal.redb", "specie.toml"].map(|f| data.join(f));
    let before = files.clone().map(|f| std::fs::read(f).ok());
    let runs = [
        specie()
            .args(["run", "--duration", "1"])
            .arg("--data-dir")
            .arg(data)
            .output()
            .expect("run specie run"),
        specie()
            .arg("audit")
            .arg("--data-dir")
            .arg(data)
            .output()
            .expect("run specie audit"),
    ];
    for (command, output) in ["run", "audit"].iter().zip(&runs) {
        let context = format!(
            "specie {command} on a directory with {}: {}",
            damage.name,
            describe(output)
        );
        assert!(!output.status.success(), "exits non-zero; {context}");
        assert_eq!(
            output.status.code(),
            Some(2),
            "exits 2 (an error, not a failed audit); {context}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let file = data.join(damage.names_file).display().to_string();
        assert!(stderr.contains(&file), "names {file}; {context}");
        assert!(
            damage.says_one_of.iter().any(|w| stderr.contains(w)),
            "says what is wrong; {context}"
        );
        assert!(
            !stderr.contains("panicked"),
            "an error, not a panic; {context}"
        );
        let after = files.clone().map(|f| std::fs::read(f).ok());
        assert!(after == before, "the files are unchanged; {context}");
    }
}

#[test]
fn damaged_data_directories_are_refused_by_name_and_left_untouched() {
    let work = tempfile::tempdir().expect("temp dir");
    let config = write_small_config(work.path());
    let healthy = work.path().join("healthy");
    let output = specie()
        .args(["run", "--duration", "0.5"])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&healthy)
        .output()
        .expect("run specie");
    assert!(
        output.status.success(),
        "the first run failed: {}",
        describe(&output)
    );
    let journal = std::fs::read(healthy.join("journal.redb")).expect("read the journal");
    let manifest = std::fs::read_to_string(healthy.join("specie.toml")).expect("read the manifest");

    let copy = |name: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).expect("create dir");
        std::fs::write(dir.join("specie.toml"), &manifest).expect("copy the manifest");
        std::fs::write(dir.join("journal.redb"), &journal).expect("copy the journal");
        dir
    };

    // Bytes overwritten in the middle of the journal: every byte of its middle half flipped.
    let dir = copy("corrupt");
    let mut bytes = journal.clone();
    let (from, to) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for b in &mut bytes[from..to] {
        *b ^= 0x5a;
    }
    std::fs::write(dir.join("journal.redb"), &bytes).expect("corrupt the journal");
    assert_refused(
        &dir,
        &Damage {
            name: "bytes overwritten in the middle of the journal",
            names_file: "journal.redb",
            says_one_of: &["corrupt"],
        },
    );

    let dir = copy("truncated");
    std::fs::write(dir.join("journal.redb"), &journal[..journal.len() / 2])
        .expect("truncate the journal");
    assert_refused(
        &dir,
        &Damage {
            name: "a truncated journal",
            names_file: "journal.redb",
            says_one_of: &["truncated", "corrupt"],
        },
    );

    let dir = copy("version");
    let version = format!(
        "format_version = {}\n",
        specie_actors::data_dir::MANIFEST_VERSION
    );
    assert!(
        manifest.contains(&version),
        "the manifest records its format version: {manifest}"
    );
    std::fs::write(
        dir.join("specie.toml"),
        manifest.replace(&version, "format_version = 99\n"),
    )
    .expect("write the manifest");
    assert_refused(
        &dir,
        &Damage {
            name: "a manifest of format version 99",
            names_file: "specie.toml",
            says_one_of: &["version 99"],
        },
    );

    let dir = copy("no-journal");
    std::fs::remove_file(dir.join("journal.redb")).expect("delete the journal");
    assert_refused(
        &dir,
        &Damage {
            name: "its journal deleted",
            names_file: "journal.redb",
            says_one_of: &["missing"],
        },
    );
    assert!(
        !dir.join("journal.redb").exists(),
        "no fresh journal was started"
    );
}
