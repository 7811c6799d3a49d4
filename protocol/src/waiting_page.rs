//! The `spawn` role's waiting page: what a browser gets while its app takes longer
//! than `waiting_page.after_ms` to start, instead of a blank tab that spins for up to
//! `ensure_timeout_ms`. A small HTML page, no JavaScript, that reloads itself (a meta
//! refresh), sent as `503` with `Retry-After` so that crawlers and load balancers
//! read "temporarily unavailable, come back", and `Cache-Control: no-store` so that
//! no cache keeps it. API clients never get it: they wait for the start as before.

use crate::reason::Reason;
use crate::request::LocalReply;

/// What a configuration says of the waiting page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingPage {
    /// How long a browser's request waits for the start before it gets the page.
    pub after_ms: u64,
    /// How often the page reloads itself, and its `Retry-After`, in seconds.
    pub refresh_seconds: u64,
    pub title: String,
    pub text: String,
}

pub const DEFAULT_AFTER_MS: u64 = 1_000;
pub const DEFAULT_REFRESH_SECONDS: u64 = 2;
pub const DEFAULT_TITLE: &str = "Starting…";
pub const DEFAULT_TEXT: &str = "The application is starting. This page reloads by itself in a moment.";

/// Whether a request gets the page rather than a wait: a `GET` or `HEAD` (reloading
/// one repeats nothing; a form's `POST` would be lost) whose `Accept` prefers HTML.
pub fn wants_page(method: Option<&[u8]>, accept: Option<&[u8]>) -> bool {
    matches!(method, Some(b"GET" | b"HEAD")) && accept.is_some_and(prefers_html)
}

/// Whether an `Accept` header names HTML (`text/html` or `application/xhtml+xml`)
/// explicitly, and ranks it at least as high as every other type it names. Wildcards
/// do not count: `curl` and most API clients send `*/*`, browsers name `text/html`.
pub fn prefers_html(accept: &[u8]) -> bool {
    let Ok(accept) = std::str::from_utf8(accept) else { return false };
    let (mut html, mut other) = (0u16, 0u16);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .next_back()
            .map_or(Some(1000), quality);
        let Some(q) = q else { return false };
        if media.eq_ignore_ascii_case("text/html") || media.eq_ignore_ascii_case("application/xhtml+xml") {
            html = html.max(q);
        } else if !media.ends_with("/*") {
            other = other.max(q);
        }
    }
    html > 0 && html >= other
}

/// A quality value (RFC 9110 §12.4.2: `0`–`1`, three decimals at most) in thousandths.
fn quality(q: &str) -> Option<u16> {
    let (whole, fraction) = q.split_once('.').unwrap_or((q, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

impl WaitingPage {
    /// The page for `app`, as the filter sends it.
    pub fn reply(&self, app: &str) -> LocalReply {
        let refresh = self.refresh_seconds.to_string();
        let (title, text) = (escape(&self.title), escape(&self.text));
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh}\">\
             <meta name=\"viewport\" content=\"width=device-width\"><meta name=\"robots\" content=\"noindex\">\
             <title>{title}</title></head>\n<body style=\"font-family:sans-serif;margin:4em auto;max-width:36em\">\
             <h1>{title}</h1><p>{text}</p></body></html>\n"
        );
        starting_reply(app, &refresh).with_header("cache-control", "no-store").with_page(page)
    }
}

/// The `503 app_starting` answer for a request that is not held while `app` starts:
/// come back after `retry_after` seconds. The waiting page adds its body to it.
pub fn starting_reply(app: &str, retry_after: &str) -> LocalReply {
    LocalReply::new(503, Reason::AppStarting, format!("{app:?} is starting")).with_header("retry-after", retry_after)
}

/// Text as HTML: the five characters that could end an element or an attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIREFOX: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    const CHROME: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
    const SAFARI: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    #[test]
    fn browsers_prefer_html() {
        for accept in [FIREFOX, CHROME, SAFARI, "text/html", "TEXT/HTML; q=1.0", "application/xhtml+xml", "text/html;level=1"] {
            assert!(prefers_html(accept.as_bytes()), "{accept}");
        }
    }

    #[test]
    fn api_clients_and_wildcards_do_not() {
        for accept in [
            "*/*",
            "text/*",
            "application/json",
            "application/json, text/html;q=0.5",
            "text/html;q=0",
            "text/html;q=0.000",
            "",
            "text/plain, */*; q=0.01",
            "text/html;q=2",
            "text/html;q=abc",
            "text/html;q=0.1234",
        ] {
            assert!(!prefers_html(accept.as_bytes()), "{accept:?}");
        }
        assert!(!prefers_html(b"text/html\xff"), "not UTF-8");
    }

    #[test]
    fn equal_rank_is_enough() {
        assert!(prefers_html(b"application/json, text/html"));
        assert!(prefers_html(b"application/json;q=0.5, text/html;q=0.5"));
        assert!(!prefers_html(b"application/json;q=0.51, text/html;q=0.5"));
    }

    #[test]
    fn only_get_and_head_get_the_page() {
        let html = Some(FIREFOX.as_bytes());
        assert!(wants_page(Some(b"GET"), html));
        assert!(wants_page(Some(b"HEAD"), html));
        for method in [&b"POST"[..], b"PUT", b"DELETE", b"get"] {
            assert!(!wants_page(Some(method), html), "{method:?}");
        }
        assert!(!wants_page(None, html));
        assert!(!wants_page(Some(b"GET"), None));
    }

    #[test]
    fn the_page_reloads_itself_says_503_and_escapes_the_text() {
        let page = WaitingPage { after_ms: 1, refresh_seconds: 3, title: "Blog <starting>".into(), text: "a & \"b\" 'c'".into() };
        let reply = page.reply("blog");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.reason, Reason::AppStarting);
        let headers = reply.response_headers();
        assert!(headers.contains(&("content-type", "text/html; charset=utf-8")), "{headers:?}");
        assert!(headers.contains(&("retry-after", "3")) && headers.contains(&("cache-control", "no-store")), "{headers:?}");
        let body = reply.body();
        assert!(body.contains(r#"<meta http-equiv="refresh" content="3">"#), "{body}");
        assert!(body.contains("<title>Blog &lt;starting&gt;</title>"), "{body}");
        assert!(body.contains("<p>a &amp; &quot;b&quot; &#39;c&#39;</p>"), "{body}");
        assert!(!body.contains("<script"), "no JavaScript");
    }
}
