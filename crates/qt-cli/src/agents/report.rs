//! The report a successful agent may give back, read the same way for every target: a JSON
//! object `{"run_id": "...", "llm_calls": N, "output": ...}` on a `command`'s stdout or in an
//! `http` target's 2xx body. Every field is optional and others are ignored; text that is not
//! such an object is no report, and the run still succeeds.

use qt_core::AgentRun;
use qt_core::redact::Redactor;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Report {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub llm_calls: Option<u32>,
    /// Any JSON the agent wants kept with the outcome in the ledger.
    #[serde(default)]
    pub output: Option<Value>,
}

impl Report {
    /// Reads a report from `text`; anything that is not a report object reads as no report.
    pub fn read(text: &[u8]) -> Self {
        serde_json::from_slice(text.trim_ascii()).unwrap_or_default()
    }

    /// The run it reports, with every secret the target holds masked in the output's strings
    /// (an agent echoing its token must not put it in the ledger).
    pub fn into_run(self, redactor: &Redactor) -> AgentRun {
        let output = self.output.filter(|v| !v.is_null()).map(|mut v| {
            mask_strings(&mut v, redactor);
            v
        });
        AgentRun {
            run_id: self.run_id,
            llm_calls: self.llm_calls.unwrap_or(0),
            output,
        }
    }
}

/// Masks every string in `value`, object keys included. Masking string by string keeps the
/// document valid JSON whatever the secrets are.
fn mask_strings(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(s) => {
            let masked = redactor.redact(&*s);
            if masked != *s {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, redactor)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut v) in entries {
                mask_strings(&mut v, redactor);
                map.insert(redactor.redact(&key), v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_report_gives_its_run_id_llm_calls_and_output() {
        let run = Report::read(br#" {"run_id": "r-1", "llm_calls": 2, "output": {"summary": "ok"}, "extra": 1} "#)
            .into_run(&Redactor::default());
        assert_eq!(run.run_id.as_deref(), Some("r-1"));
        assert_eq!(run.llm_calls, 2);
        assert_eq!(run.output, Some(json!({"summary": "ok"})));
    }

    #[test]
    fn text_that_is_not_a_report_object_is_no_report() {
        for text in [&b""[..], b"done", b"[1, 2]", b"{\"llm_calls\": -1}", b"{\"run_id\": 7}"] {
            let run = Report::read(text).into_run(&Redactor::default());
            assert_eq!(run, AgentRun::default(), "{}", String::from_utf8_lossy(text));
        }
        let run = Report::read(br#"{"output": null}"#).into_run(&Redactor::default());
        assert_eq!(run.output, None);
    }

    #[test]
    fn secrets_are_masked_in_every_string_of_the_output_and_it_stays_json() {
        let redactor = Redactor::new(["tok\"en-1".to_owned(), "pw-2".to_owned()]);
        let text = json!({
            "output": {
                "echo": "Bearer tok\"en-1",
                "list": ["a", "x pw-2 y", 3],
                "pw-2": true,
                "url": "https://user:hunter2@agents.internal/x"
            }
        })
        .to_string();
        let run = Report::read(text.as_bytes()).into_run(&redactor);
        let output = run.output.unwrap();
        let shown = output.to_string();
        assert!(
            !shown.contains("tok") && !shown.contains("pw-2") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(output["echo"], "Bearer ***");
        assert_eq!(output["list"], json!(["a", "x *** y", 3]));
        assert_eq!(output["***"], true);
    }
}
