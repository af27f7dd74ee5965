//! `cargo xtask tidy`: rules about the workspace's shape that the compiler does not check.
//!
//! - **Layering** (ARCHITECTURE.md): adapters, stores, ledgers and telemetry depend on
//!   `qt-core` only among the workspace's crates; `qt-engine` on `qt-core` only (no adapter,
//!   store or ledger); only `qt-cli` may depend on every library. Dev-dependencies are free
//!   (tests and examples may use any crate), except that nothing depends on `xtask`.
//! - **Workspace dependencies**: every crate takes each dependency from
//!   `[workspace.dependencies]` (`name.workspace = true`), so one version is chosen in one
//!   place; every entry there is used by some crate; every crate opts into the workspace's
//!   lints.
//!
//! The dependency graph comes from `cargo metadata`; what it does not report (how a
//! dependency was declared, the workspace's own dependency table, lints) is read from the
//! manifests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What a crate is for, which decides what it may depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Core,
    /// An adapter, an idempotency store, a ledger or the telemetry crate: a library a user
    /// picks à la carte, so it carries nothing but `qt-core`.
    Component,
    Engine,
    Binary,
    /// Test and benchmark helpers; never published.
    Support,
    Tool,
}

impl Role {
    fn of(name: &str) -> Option<Role> {
        Some(match name {
            "qt-core" => Role::Core,
            "qt-engine" => Role::Engine,
            "qt-telemetry" => Role::Component,
            "qt-cli" => Role::Binary,
            "qt-test-support" | "qt-bench-support" => Role::Support,
            "xtask" => Role::Tool,
            n if n.starts_with("qt-adapter-") || n.starts_with("qt-idempotency-") || n.starts_with("qt-ledger-") => {
                Role::Component
            }
            _ => return None,
        })
    }

    /// Whether a normal or build dependency on a crate of role `on` is allowed.
    fn may_depend_on(self, on: Role) -> bool {
        match self {
            Role::Core => false,
            Role::Component | Role::Engine => on == Role::Core,
            Role::Binary => !matches!(on, Role::Support | Role::Tool | Role::Binary),
            Role::Support | Role::Tool => on != Role::Tool,
        }
    }
}

/// One dependency of a workspace crate, as `cargo metadata` reports it.
#[derive(Debug)]
struct Dependency {
    /// The name the crate uses for it: its key in the manifest.
    key: String,
    /// Set when the dependency is another crate of the workspace.
    member: Option<String>,
    dev: bool,
}

#[derive(Debug)]
struct Member {
    name: String,
    manifest_path: PathBuf,
    dependencies: Vec<Dependency>,
}

pub fn run() -> Result<()> {
    let metadata = crate::cmd::output("cargo", &["metadata", "--format-version", "1", "--no-deps", "--locked"])?;
    let members =
        members(&serde_json::from_str(&metadata).context("cargo metadata printed something other than JSON")?)?;
    let root_manifest = read_manifest(&crate::cmd::workspace_root().join("Cargo.toml"))?;
    let mut problems = layering_problems(&members);
    problems.extend(unused_workspace_dependencies(&root_manifest, &members));
    for member in &members {
        let manifest = read_manifest(&member.manifest_path)?;
        problems.extend(manifest_problems(&member.name, &manifest));
    }
    if problems.is_empty() {
        eprintln!(
            "xtask tidy: layering, workspace dependencies and lints hold for {} crates",
            members.len()
        );
        return Ok(());
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    bail!(
        "{} tidy problem(s); each is printed above with what to do",
        problems.len()
    )
}

fn read_manifest(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse()
        .with_context(|| format!("cannot parse {} as TOML", path.display()))
}

fn members(metadata: &Value) -> Result<Vec<Member>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata has no packages")?;
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().context("a package without a name")?.to_owned();
            let manifest_path = PathBuf::from(p["manifest_path"].as_str().context("a package without a manifest")?);
            let dependencies = p["dependencies"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    let package = d["name"].as_str().unwrap_or_default();
                    let key = d["rename"].as_str().unwrap_or(package).to_owned();
                    let member = (d["path"].is_string() && names.contains(package)).then(|| package.to_owned());
                    Dependency {
                        key,
                        member,
                        dev: d["kind"].as_str() == Some("dev"),
                    }
                })
                .collect();
            Ok(Member {
                name,
                manifest_path,
                dependencies,
            })
        })
        .collect()
}

fn layering_problems(members: &[Member]) -> Vec<String> {
    let mut problems = Vec::new();
    for member in members {
        let Some(role) = Role::of(&member.name) else {
            problems.push(format!(
                "crate {} has no role in the layering; add it to `Role::of` in xtask/src/tidy.rs and to ARCHITECTURE.md",
                member.name
            ));
            continue;
        };
        for dep in &member.dependencies {
            let Some(on) = dep.member.as_deref() else { continue };
            let Some(on_role) = Role::of(on) else { continue };
            let allowed = if dep.dev {
                on_role != Role::Tool
            } else {
                role.may_depend_on(on_role)
            };
            if !allowed {
                let kind = if dep.dev { "dev-dependency" } else { "dependency" };
                problems.push(format!(
                    "{} has a {kind} on {on}, which the layering forbids (ARCHITECTURE.md, \"Layering\"): move what it needs into qt-core, or have qt-cli wire the two together",
                    member.name
                ));
            }
        }
    }
    problems
}

/// Entries of `[workspace.dependencies]` that no crate uses.
fn unused_workspace_dependencies(root: &toml::Table, members: &[Member]) -> Vec<String> {
    let declared = root
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table);
    let used: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| m.dependencies.iter().map(|d| d.key.as_str()))
        .collect();
    declared
        .into_iter()
        .flat_map(|table| table.keys())
        .filter(|key| !used.contains(key.as_str()))
        .map(|key| format!("[workspace.dependencies] declares {key}, which no crate uses: remove it from Cargo.toml"))
        .collect()
}

/// A crate's own manifest: it opts into the workspace lints and takes every dependency from
/// the workspace.
fn manifest_problems(name: &str, manifest: &toml::Table) -> Vec<String> {
    let mut problems = Vec::new();
    let lints_inherited = manifest
        .get("lints")
        .and_then(|l| l.get("workspace"))
        .and_then(toml::Value::as_bool)
        == Some(true);
    if !lints_inherited {
        problems.push(format!(
            "{name} does not opt into the workspace lints: add `[lints]` with `workspace = true` to its Cargo.toml"
        ));
    }
    for (section, deps) in dependency_tables(manifest) {
        for (key, spec) in deps {
            let inherited = spec.get("workspace").and_then(toml::Value::as_bool) == Some(true);
            if !inherited {
                problems.push(format!(
                    "{name} declares {key} in [{section}] itself: declare it in the root Cargo.toml's [workspace.dependencies] and write `{key}.workspace = true`"
                ));
            }
        }
    }
    problems
}

/// Every dependency table of a manifest, named as in the manifest (`dev-dependencies`,
/// `target.'cfg(unix)'.dependencies`, ...).
fn dependency_tables(manifest: &toml::Table) -> Vec<(String, &toml::Table)> {
    const SECTIONS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let targets = manifest
        .get("target")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
        .filter_map(|(cfg, t)| Some((format!("target.{cfg}."), t.as_table()?)));
    std::iter::once((String::new(), manifest))
        .chain(targets)
        .flat_map(|(prefix, t)| {
            SECTIONS.iter().filter_map(move |section| {
                let deps = t.get(*section).and_then(toml::Value::as_table)?;
                Some((format!("{prefix}{section}"), deps))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, deps: &[(&str, bool)]) -> Member {
        Member {
            name: name.to_owned(),
            manifest_path: PathBuf::new(),
            dependencies: deps
                .iter()
                .map(|&(on, dev)| Dependency {
                    key: on.to_owned(),
                    member: on.starts_with("qt-").then(|| on.to_owned()),
                    dev,
                })
                .collect(),
        }
    }

    #[test]
    fn an_adapter_depending_on_the_engine_breaks_the_layering() {
        let problems = layering_problems(&[member("qt-adapter-kafka", &[("qt-core", false), ("qt-engine", false)])]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("qt-adapter-kafka has a dependency on qt-engine"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_engine_may_use_the_mock_adapter_in_its_tests_but_not_in_its_code() {
        assert!(layering_problems(&[member("qt-engine", &[("qt-core", false), ("qt-adapter-mock", true)])]).is_empty());
        let problems = layering_problems(&[member("qt-engine", &[("qt-adapter-mock", false)])]);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn the_binary_may_depend_on_every_library_but_not_on_test_support() {
        let libraries = [
            ("qt-core", false),
            ("qt-engine", false),
            ("qt-adapter-sqs", false),
            ("qt-ledger-postgres", false),
            ("qt-telemetry", false),
            ("qt-test-support", true),
        ];
        assert!(layering_problems(&[member("qt-cli", &libraries)]).is_empty());
        assert_eq!(
            layering_problems(&[member("qt-cli", &[("qt-test-support", false)])]).len(),
            1
        );
    }

    #[test]
    fn a_crate_without_a_role_is_reported_rather_than_let_through() {
        let problems = layering_problems(&[member("qt-mystery", &[("qt-engine", false)])]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no role"), "{problems:?}");
    }

    #[test]
    fn a_workspace_dependency_no_crate_uses_is_reported_by_name() {
        let root: toml::Table = "[workspace.dependencies]\nserde = \"1\"\nleft-pad = \"1\"\n"
            .parse()
            .unwrap();
        let problems = unused_workspace_dependencies(&root, &[member("qt-core", &[("serde", false)])]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("left-pad"), "{problems:?}");
    }

    #[test]
    fn a_dependency_declared_in_the_crate_itself_or_missing_lints_are_reported() {
        let manifest: toml::Table = "[dependencies]\nserde.workspace = true\nrand = \"0.9\"\n\
             [target.'cfg(unix)'.dev-dependencies]\nnix = { version = \"0.31\" }\n"
            .parse()
            .unwrap();
        let problems = manifest_problems("qt-core", &manifest);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("workspace lints"), "{problems:?}");
        assert!(problems[1].contains("rand in [dependencies]"), "{problems:?}");
        assert!(
            problems[2].contains("nix in [target.cfg(unix).dev-dependencies]"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_manifest_that_inherits_everything_has_no_problems() {
        let manifest: toml::Table = "[dependencies]\nserde = { workspace = true, features = [\"derive\"] }\n\
             [lints]\nworkspace = true\n"
            .parse()
            .unwrap();
        assert!(manifest_problems("qt-core", &manifest).is_empty());
    }
}
