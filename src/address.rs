//! URLs as edgehook takes them from configuration and API clients: parsed without ever
//! reaching the host-name code that panics.
//!
//! The build links no Unicode back end for host names (`idna_adapter` 1.0, see `Cargo.toml`),
//! and that stub asserts that the host it is given has no upper-case ASCII letters: a host
//! mixing them with non-ASCII ones (`https://mS0γ/`, found by the `api_bodies` fuzz target)
//! panicked inside `Url::parse` — an abort of the daemon from one API request or one line of
//! configuration; so did one percent-encoding such letters (`https:/0g.x%CC`). A host with
//! letters outside ASCII or a `%` is refused before the URL is parsed (write it as punycode,
//! `xn--...`, as before).

/// `url` parsed, or why not.
pub fn parse(url: &str) -> Result<reqwest::Url, String> {
    if !host_is_plain(url) {
        return Err(
            "not a URL (a host name with letters outside ASCII, or percent-encoded): write it as punycode (xn--...)"
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

/// Whether the host of `url` is plain ASCII without percent-encoding, read as the URL parser
/// reads it: tabs and newlines removed, leading and trailing spaces and controls trimmed;
/// the authority follows the scheme's `:` and any number of `/` or `\\` (a special scheme's
/// URL takes its host after one slash, or none: `https:/host`, found by the fuzz target
/// too) up to the first `/`, `?`, `#` or `\\`; the host is what follows its last `@`.
fn host_is_plain(url: &str) -> bool {
    let url: String = url
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let after_scheme = url.split_once(':').map_or(url.as_str(), |(_, rest)| rest);
    let rest = after_scheme.trim_start_matches(['/', '\\']);
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host.is_ascii() && !host.contains('%')
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
            ("https:/Vjcm\u{3b3}jcmV/c/", Err("punycode")),
            ("https:Vjcm\u{3b3}jcmV/c/", Err("punycode")),
            ("https:\\\\Vjcm\u{3b3}jcmV/c/", Err("punycode")),
            ("https:/0\ng.sec_c0c1whsCCCCCC%CCCCCCCCCCCec_c", Err("punycode")),
            ("https://ho\tst.Ex%41mple/", Err("punycode")),
            ("https://us%C3%A9r:p\u{e4}ss@host.example/", Ok("host.example")),
            ("https://bücher.example/", Err("punycode")),
            ("https://user:pässword@host.example/", Ok("host.example")),
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

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}
