//! `${VAR}` and `${VAR:-default}` substitution, done on the text before YAML parsing so it
//! works in every field. `$$` is a literal `$`.

use super::problems::ConfigErrors;

/// Substitutes variables using `lookup`. Every unset variable without a default is
/// reported, with the line it is on.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigErrors> {
    let done = substitute_marked(text, lookup);
    let mut problems = ConfigErrors::default();
    for p in done.problems {
        problems.push(format!("line {}", p.line), p.message);
    }
    problems.into_result(done.text)
}

/// A problem found while substituting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EnvProblem {
    /// 1-based line of the `${`.
    pub line: usize,
    pub message: String,
    /// For an unset variable: the text that stands in for it, so that the field it lands in
    /// can be found once the YAML is parsed. It is chosen to be read as a plain string in any
    /// YAML context (no flow indicators, no quotes), so the rest of the file parses as usual.
    pub marker: Option<String>,
}

/// The text with every variable that could be substituted substituted, each unset one
/// replaced by its [`EnvProblem::marker`], and every problem in the order of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Substituted {
    pub text: String,
    pub problems: Vec<EnvProblem>,
}

/// The stand-in for the `n`th unset variable `name`.
fn marker(n: usize, name: &str) -> String {
    format!("__qt_unset_{n}_{name}__")
}

pub(crate) fn substitute_marked(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Substituted {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push_str(&text[literal_start..=i]);
                i += 2;
                literal_start = i;
            }
            Some(b'{') => {
                let line = text[..i].matches('\n').count() + 1;
                let Some(close) = text[i + 2..].find('}') else {
                    problems.push(EnvProblem {
                        line,
                        message: "unterminated ${ (write $$ for a literal $)".to_owned(),
                        marker: None,
                    });
                    break;
                };
                out.push_str(&text[literal_start..i]);
                let inner = &text[i + 2..i + 2 + close];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    problems.push(EnvProblem {
                        line,
                        message: format!("invalid variable name {name:?} in ${{{inner}}}"),
                        marker: None,
                    });
                } else {
                    match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                        (Some(v), _) => out.push_str(&v),
                        (None, Some(d)) => out.push_str(d),
                        (None, None) => {
                            let stand_in = marker(problems.len(), name);
                            out.push_str(&stand_in);
                            problems.push(EnvProblem {
                                line,
                                message: format!(
                                    "environment variable {name} is not set; use ${{{name}:-default}} to give a default"
                                ),
                                marker: Some(stand_in),
                            });
                        }
                    }
                }
                i += 2 + close + 1;
                literal_start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[literal_start.min(text.len())..]);
    Substituted { text: out, problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let got = substitute("a: ${HOST}:${PORT:-9092} $$x ${EMPTY:-d} ${EMPTY}", env).unwrap();
        assert_eq!(got, "a: broker:9092 $x d ");
    }

    #[test]
    fn reports_every_missing_variable_with_its_line() {
        let err = substitute("a: ${ONE}\nb: ${TWO}\n", env).unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert_eq!(err.problems[1].path, "line 2");
        assert!(err.problems[1].message.contains("TWO"));
    }
}
