//! One `qt dlq` story, told the same way for every source: messages fail into the
//! dead-letter destination, are listed and shown, replayed after the agent is fixed, kept by
//! the loop guard, replayed under a SIGKILL without loss, and purged by filter; a dry run
//! changes nothing, and a replay on a terminal shows its progress.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::files::ledger;
use super::process::{Finished, QtRun, command_line, run_bounded};
use super::unique;
use super::wait::wait_until;

/// Long enough for one `qt` command against a slow broker on a loaded machine.
const COMMAND: Duration = Duration::from_secs(90);

/// A command agent, to run with `/bin/sh`, that fails for good (exit 1, with the tenant in its
/// error) while the file `broken` exists, and succeeds otherwise.
pub fn breakable_agent(dir: &Path, broken: &Path) -> PathBuf {
    let script = dir.join("breakable.sh");
    std::fs::write(
        &script,
        format!(
            "if [ -e {broken} ]; then echo \"refused for tenant $QT_TENANT_ID\" >&2; exit 1; fi\n",
            broken = broken.display()
        ),
    )
    .unwrap();
    script
}

/// A `qt run` of a configuration whose agent is [`breakable_agent`] and whose ledger is the
/// JSONL file `ledger`, with `on_failure: dlq`.
pub struct DlqStory<'a> {
    pub dir: &'a Path,
    pub config: PathBuf,
    pub ledger: PathBuf,
    pub broken: PathBuf,
    pub run: &'a QtRun,
    /// The `qt` command with whatever environment the source needs.
    pub qt: &'a dyn Fn() -> Command,
    /// Makes this story's dedup keys its own.
    pub prefix: String,
    /// `qt dlq --hold` for every session: set on SQS, where the letters of the replay the
    /// story kills stay hidden this long.
    pub hold: Option<&'static str>,
}

impl DlqStory<'_> {
    fn break_agent(&self) {
        std::fs::write(&self.broken, "").unwrap();
    }

    fn fix_agent(&self) {
        std::fs::remove_file(&self.broken).unwrap();
    }

    fn key(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// `qt send` of a message named `name` (its dedup key) for `tenant`.
    fn send(&self, name: &str, tenant: &str, extra: &[&str]) {
        let key = self.key(name);
        let mut cmd = (self.qt)();
        cmd.args(["send", "-c"]).arg(&self.config).args([
            "--body",
            &format!("{{\"n\":\"{key}\"}}"),
            "-H",
            &format!("x-tenant-id={tenant}"),
            "-H",
            "x-event-name=dlq.story",
            "-H",
            &format!("x-dedup-key={key}"),
        ]);
        for header in extra {
            cmd.args(["-H", header]);
        }
        let sent = run_bounded(&mut cmd, self.dir, COMMAND);
        assert!(sent.status.success(), "{}", sent.stderr);
    }

    /// The statuses the ledger holds for the message named `name`, in order.
    fn statuses(&self, name: &str) -> Vec<String> {
        let key = self.key(name);
        ledger(&self.ledger)
            .iter()
            .filter(|r| r["dedup_key"].as_str() == Some(key.as_str()))
            .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn wait_status(&self, names: &[&str], status: &str) {
        wait_until(
            &format!("a {status} record for each of {names:?}"),
            COMMAND,
            || names.iter().all(|n| self.statuses(n).iter().any(|s| s == status)),
            || format!("ledger:\n{:#?}\nqt log:\n{}", ledger(&self.ledger), self.run.logs()),
        );
    }

    /// `qt dlq SUBCOMMAND -c CONFIG [--hold ..]`, to which the caller adds its arguments.
    fn dlq_command(&self, subcommand: &str) -> Command {
        let mut cmd = (self.qt)();
        cmd.args(["dlq", subcommand, "-c"]).arg(&self.config);
        if let Some(hold) = self.hold {
            cmd.args(["--hold", hold]);
        }
        cmd
    }

    fn dlq(&self, args: &[&str]) -> Finished {
        run_bounded(self.dlq_command(args[0]).args(&args[1..]), self.dir, COMMAND)
    }

    /// The letters `qt dlq list --json` prints.
    fn list(&self) -> Vec<Value> {
        let listed = self.dlq(&["list", "--json", "--limit", "1000"]);
        assert!(listed.status.success(), "{}", listed.stderr);
        listed
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// The story's messages among the letters, by name.
    fn names(&self, letters: &[Value]) -> BTreeSet<String> {
        let prefix = format!("{}-", self.prefix);
        letters
            .iter()
            .filter_map(|l| l["headers"]["x-dedup-key"].as_str())
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect()
    }

    fn wait_listed(&self, names: &[&str]) {
        let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
        wait_until(
            &format!("exactly {names:?} in the dead-letter destination"),
            COMMAND,
            || self.names(&self.list()) == want,
            || format!("listed {:?}\nqt log:\n{}", self.names(&self.list()), self.run.logs()),
        );
    }

    /// A replay killed part way loses nothing: each letter is still dead-lettered, or
    /// replayed, or both.
    fn interrupted_replay(&self) {
        self.break_agent();
        let slow = ["c1", "c2", "c3", "c4", "c5", "c6"];
        for name in slow {
            self.send(name, "c", &[]);
        }
        self.wait_status(&slow, "failed");
        self.wait_listed(&["b1", "b2", "c1", "c2", "c3", "c4", "c5", "c6"]);
        self.fix_agent();
        let mut replay = self
            .dlq_command("replay")
            .args(["--tenant", "c", "--rate", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1700));
        replay.kill().unwrap();
        replay.wait().unwrap();
        // Letters the killed session held come back when the broker notices; what it
        // published runs. None may be missing.
        let missing = || {
            let listed = self.names(&self.list());
            slow.iter()
                .filter(|n| !listed.contains(**n) && !self.statuses(n).iter().any(|s| s == "succeeded"))
                .map(|n| (*n).to_owned())
                .collect::<Vec<_>>()
        };
        wait_until(
            "every letter of the killed replay dead-lettered or run",
            COMMAND,
            || missing().is_empty(),
            || {
                format!(
                    "neither dead-lettered nor run: {:?}\nqt log:\n{}",
                    missing(),
                    self.run.logs()
                )
            },
        );
        self.dlq(&["replay", "--tenant", "c"]).assert_shows(&["failed 0"]);
        self.wait_status(&slow, "succeeded");
        self.wait_listed(&["b1", "b2"]);
    }

    /// The whole story. The destination must hold none of this story's letters at the start.
    pub fn tell(&self) {
        // Four messages fail into the dead-letter destination.
        self.break_agent();
        for (name, tenant) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
            self.send(name, tenant, &[]);
        }
        self.wait_status(&["a1", "a2", "b1", "b2"], "failed");
        self.wait_listed(&["a1", "a2", "b1", "b2"]);

        // Listing changes nothing; show decodes one letter.
        let letters = self.list();
        assert_eq!(
            self.names(&self.list()),
            self.names(&letters),
            "a second listing sees the same"
        );
        let a1 = letters
            .iter()
            .find(|l| l["headers"]["x-dedup-key"].as_str() == Some(&self.key("a1")))
            .unwrap();
        assert_eq!(a1["tenant"], "a");
        assert_eq!(a1["event"], "dlq.story");
        assert_eq!(a1["details"]["error_class"], "permanent");
        assert_eq!(a1["details"]["replays"], 0);
        let reason = a1["details"]["reason"].as_str().unwrap();
        assert!(reason.contains("refused for tenant a"), "{reason}");
        let shown = self.dlq(&["show", a1["id"].as_str().unwrap()]);
        shown.assert_shows(&["refused for tenant a", "attempts:", &self.key("a1")]);
        let table = self.dlq(&["list", "--tenant", "b"]);
        table.assert_shows(&["refused for tenant b"]);
        assert!(!table.stdout.contains("refused for tenant a"), "{}", table.stdout);

        // A dry run says what it would do and changes nothing (the end of the story checks
        // that no copy of a1 or a2 ran).
        self.fix_agent();
        self.dlq(&["replay", "--tenant", "a", "--dry-run"])
            .assert_shows(&["would replay 2, skipped 0, failed 0"]);
        assert_eq!(
            self.names(&self.list()),
            self.names(&letters),
            "a dry run changes nothing"
        );

        // Fixed, the replay of one tenant's letters succeeds; the others stay.
        let replayed = self.dlq(&["replay", "--tenant", "a"]);
        replayed.assert_shows(&["replayed 2, skipped 0, failed 0"]);
        self.wait_status(&["a1", "a2"], "succeeded");
        self.wait_listed(&["b1", "b2"]);

        // The loop guard: a letter replayed three times already is skipped unless forced.
        self.break_agent();
        self.send("g1", "g", &["x-qt-replays=3"]);
        self.wait_listed(&["b1", "b2", "g1"]);
        self.fix_agent();
        let guarded = self.dlq(&["replay", "--tenant", "g"]);
        guarded.assert_shows(&["replayed 0, skipped 1, failed 0"]);
        assert!(guarded.stderr.contains("--max-replays 3"), "{}", guarded.stderr);
        self.wait_listed(&["b1", "b2", "g1"]);
        self.dlq(&["replay", "--tenant", "g", "--force"])
            .assert_shows(&["replayed 1, skipped 0, failed 0"]);
        self.wait_status(&["g1"], "succeeded");
        self.wait_listed(&["b1", "b2"]);

        self.interrupted_replay();

        // Purge by filter: only the matching letters go.
        self.break_agent();
        self.send("e1", "e", &[]);
        self.send("e2", "e", &[]);
        self.wait_listed(&["b1", "b2", "e1", "e2"]);
        let refused = self.dlq(&["purge", "--tenant", "b"]);
        assert!(!refused.status.success(), "purge off a terminal needs --yes");
        assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
        self.dlq(&["purge", "--reason", "tenant b", "--yes"])
            .assert_shows(&["purged 2"]);
        self.wait_listed(&["e1", "e2"]);
        self.fix_agent();

        // On a terminal a replay shows its counts and rate as it goes.
        let mut replay = self.dlq_command("replay");
        replay.args(["--tenant", "e", "--rate", "2"]);
        let shown = on_terminal(&replay, self.dir);
        for words in [
            "replayed 1 · skipped 0 · failed 0 · read 1",
            "/s",
            "replayed 2, skipped 0, failed 0",
        ] {
            assert!(shown.contains(words), "{words:?} not on the terminal:\n{shown}");
        }
        self.wait_status(&["e1", "e2"], "succeeded");
        self.wait_listed(&[]);

        // Long after the replays: a1 and a2 ran once each, so the dry run published nothing.
        for name in ["a1", "a2"] {
            assert_eq!(self.statuses(name), ["failed", "succeeded"], "{name}");
        }
    }
}

/// What `cmd` writes when run on a terminal (a pseudo-terminal `script` makes), which must
/// end in [`COMMAND`] and succeed.
fn on_terminal(cmd: &Command, dir: &Path) -> String {
    let mut script = Command::new("script");
    script.args(["--quiet", "--return", "--command", &command_line(cmd), "/dev/null"]);
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => script.env(name, value),
            None => script.env_remove(name),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        script.current_dir(cwd);
    }
    let ran = run_bounded(&mut script, dir, COMMAND);
    assert!(ran.status.success(), "{}: {}{}", ran.command, ran.stdout, ran.stderr);
    ran.stdout
}

/// A prefix for one story's dedup keys.
pub fn story_prefix() -> String {
    unique("dlq")
}
