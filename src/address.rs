//! URLs as edgehook takes them from configuration and API clients: parsed without ever
//! reaching the host-name code that panics.
//!
//! The build links no Unicode back end for host names (`idna_adapter` 1.0, see `Cargo.toml`),
//! and that stub asserts that the host it is given has no upper-case ASCII letters: a host
//! mixing them with non-ASCII ones (`https://mS0γ/`, found by the `api_bodies` fuzz target)
//! panicked inside `Url::parse` — an abort of the daemon from one API request or one line of
//! configuration. A host with letters outside ASCII is refused before the URL is parsed
//! (write it as punycode, `xn--...`, as before).

/// `url` parsed, or why not.
pub fn parse(url: &str) -> Result<reqwest::Url, String> {
    if !host_is_ascii(url) {
        return Err(
            "not a URL (a host name with letters outside ASCII): write it as punycode (xn--...)"
                .into(),
        );
    }
    reqwest::Url::parse(url).map_err(|e| match e {
        url::ParseError::IdnaError => format!(
            "not a URL ({e}): write a host name with letters outside ASCII as punycode (xn--...)"
        ),
        e => format!("not a URL ({e})"),
    })
}

/// Whether the authority of `url` (between `//` and the first `/`, `?`, `#` or `\`; the whole
/// text when it has none) is ASCII.
fn host_is_ascii(url: &str) -> bool {
    let rest = url.split_once("//").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    rest[..end].is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_a_table() {
        #[rustfmt::skip]
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("https://events.example.com/hook", Ok("events.example.com")),
            ("https://EVENTS.example.com/hook", Ok("events.example.com")),
            ("http://127.0.0.1:8080/x?y=ü", Ok("127.0.0.1")),
            ("https://xn--bcher-kva.example/", Ok("xn--bcher-kva.example")),
            // The fuzz target's find: upper-case ASCII beside non-ASCII in the host.
            ("https://mS0c2V\u{3b3}jcmV/c/", Err("punycode")),
            ("https://bücher.example/", Err("punycode")),
            ("https://user:pässword@host.example/", Err("punycode")),
            ("not a url", Err("not a URL")),
            ("", Err("not a URL")),
        ];
        for (url, want) in rows {
            match (parse(url), want) {
                (Ok(u), Ok(host)) => assert_eq!(u.host_str(), Some(*host), "{url}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{url}: {e}"),
                (got, _) => panic!("{url}: {got:?}"),
            }
        }
    }
}
