//! Collecting every configuration problem, each with the path of the field it concerns.

use std::fmt;

/// One problem: `source.brokers: required`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field, as a dotted path (`source.brokers[0]`), or `line N` for a problem found
    /// before parsing; empty for the file as a whole.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// In the order they were found.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `ok` when no problem was found, else every problem.
    pub fn into_result<T>(self, ok: T) -> Result<T, ConfigErrors> {
        if self.problems.is_empty() { Ok(ok) } else { Err(self) }
    }
}

/// Joins a parent path and a field name.
pub fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else if field.starts_with('[') {
        format!("{parent}{field}")
    } else {
        format!("{parent}.{field}")
    }
}

/// Every problem `cfg` has at `path`, as an operator reads them (for tests).
#[cfg(test)]
pub(crate) fn problems_found(cfg: &impl Validate, path: &str) -> Vec<String> {
    let mut problems = ConfigErrors::default();
    cfg.validate(path, &mut problems);
    problems.problems.iter().map(ToString::to_string).collect()
}

/// Semantic checks that serde cannot express. Implementations push every problem they find
/// instead of stopping at the first.
pub trait Validate {
    /// Pushes every problem of `self`, which sits at `path` in the file, onto `problems`.
    fn validate(&self, path: &str, problems: &mut ConfigErrors);
}
