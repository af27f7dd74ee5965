//! Keeping the broker password out of every message this crate produces.
//!
//! URL masking alone is not enough: lapin and the URI parser echo the URL in some errors
//! (`Invalid URL: '...'`) and the password can surface percent-decoded, outside any URL
//! shape. So every text that leaves this crate goes through a [`Redactor`], which masks
//! URLs and then removes the password itself in both its encoded and decoded forms.

use qt_core::redact::Redactor;

/// A redactor for the credentials embedded in `url`: the password as written and
/// percent-decoded.
pub(crate) fn for_url(url: &str) -> Redactor {
    let mut r = Redactor::default();
    if let Ok(parsed) = url::Url::parse(url) {
        // A password equal to the user name is shown with the user name anyway; masking
        // it everywhere would only hide the user (`guest:guest` in development).
        if let Some(raw) = parsed.password().filter(|p| *p != parsed.username()) {
            r.add(raw);
            if let Some(decoded) = percent_decode(raw) {
                r.add(decoded);
            }
        }
    }
    if let Some((user, raw)) = userinfo(url)
        && raw != user
    {
        r.add(raw);
    }
    r
}

/// User and password exactly as written in `url`, which the URL parser may have re-encoded.
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let after_scheme = &url[url.find("://")? + 3..];
    let authority = &after_scheme[..after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':')
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_urls_and_bare_passwords_encoded_or_not() {
        let r = for_url("amqp://app:p%40ss%2Fw0rd@mq.internal:5672/prod");
        let text = "Invalid URL: 'amqp://app:p%40ss%2Fw0rd@mq.internal:5672/prod'; auth p@ss/w0rd refused";
        let cleaned = r.redact(text);
        assert!(!cleaned.contains("p%40ss%2Fw0rd"), "{cleaned}");
        assert!(!cleaned.contains("p@ss/w0rd"), "{cleaned}");
        assert!(cleaned.contains("mq.internal:5672"), "{cleaned}");
    }

    #[test]
    fn a_password_equal_to_the_user_name_leaves_the_user_visible() {
        let r = for_url("amqp://guest:guest@localhost:5672/%2f");
        assert_eq!(
            r.redact("cannot reach amqp://guest:guest@localhost:5672/%2f as guest"),
            "cannot reach amqp://guest:***@localhost:5672/%2f as guest"
        );
    }

    #[test]
    fn without_a_password_text_is_kept() {
        let r = for_url("amqp://localhost:5672/%2f");
        assert_eq!(r.redact("queue orders not found"), "queue orders not found");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the password and wherever it appears, the cleaned text does not hold it.
        /// (`*` is left out of the alphabet: the mask itself is made of it.)
        #[test]
        fn password_never_survives(
            password in "[A-Za-z0-9_~!$.-]{1,24}",
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
        ) {
            prop_assume!(password != "user");
            let url = format!("amqp://user:{password}@host:5672/vh");
            let r = for_url(&url);
            for text in [
                format!("{before}{url}{after}"),
                format!("{before}{password}{after}"),
                format!("Invalid URL: '{url}'"),
            ] {
                let cleaned = r.redact(&text);
                prop_assert!(!cleaned.contains(&password), "{cleaned} leaks {password}");
            }
        }
    }
}
