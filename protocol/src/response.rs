//! Rewrites the backend's view back into the client's on the way out, as Apache's
//! ProxyPassReverse and ProxyPassReverseCookiePath do: `Location` and
//! `Content-Location` under the href become URLs under the client's host and mount
//! point, and a `Set-Cookie` `Path` under the href's path moves under the mount point.
//!
//! A path with no host (`/login`, a cookie's `Path`) is rewritten only when the href
//! has a path of its own: a backend that honours SCRIPT_NAME (`X-Script-Name`,
//! `X-Forwarded-Prefix`) already answers `/blog/login`, and with no href path that
//! cannot be told from a path of its own, so it is left as the backend wrote it.

use crate::href::Href;
use crate::paths::strip_segment_prefix;

/// What the client asked for, kept from the request for its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// `http` or `https`.
    pub scheme: &'static str,
    pub host: String,
    /// The mount point, normalised ("" for the root).
    pub mount: String,
}

/// The backend's path `path` as the client sees it, when it lies under the href's path.
fn client_path(href: &Href, view: &ClientView, path: &str) -> Option<String> {
    let rest = strip_segment_prefix(path, &href.path)?;
    let mut out = format!("{}{}", view.mount, rest);
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Rewrites a `Location` or `Content-Location` value; `None` leaves it alone.
pub fn rewrite_location(value: &str, href: &Href, view: &ClientView) -> Option<String> {
    if value.starts_with('/') && !value.starts_with("//") {
        if href.path.is_empty() {
            return None;
        }
        let (path, tail) = split_path(value);
        return client_path(href, view, path).map(|p| format!("{p}{tail}"));
    }
    let after_scheme = value.strip_prefix(&href.scheme)?.strip_prefix("://")?;
    let end = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    if !same_authority(authority, href) {
        return None;
    }
    let (path, tail) = split_path(if rest.is_empty() { "/" } else { rest });
    let path = if path.is_empty() { "/" } else { path };
    let client = client_path(href, view, path)?;
    Some(format!("{}://{}{}{}", view.scheme, view.host, client, tail))
}

fn split_path(value: &str) -> (&str, &str) {
    let end = value.find(['?', '#']).unwrap_or(value.len());
    value.split_at(end)
}

/// `host` and `host:default-port` name the same backend.
fn same_authority(authority: &str, href: &Href) -> bool {
    if authority.eq_ignore_ascii_case(&href.authority) {
        return true;
    }
    let default = if href.scheme == "https" { ":443" } else { ":80" };
    href.authority.strip_suffix(default).is_some_and(|host| authority.eq_ignore_ascii_case(host))
}

/// Rewrites the `Path` attribute of a `Set-Cookie` value; `None` leaves it alone.
pub fn rewrite_cookie_path(value: &str, href: &Href, view: &ClientView) -> Option<String> {
    if href.path.is_empty() {
        return None;
    }
    let mut changed = false;
    let parts: Vec<String> = value
        .split(';')
        .enumerate()
        .map(|(i, part)| {
            if i > 0 {
                let trimmed = part.trim_start();
                let lead = &part[..part.len() - trimmed.len()];
                if let Some((name, path)) = trimmed.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("path") {
                        if let Some(new) = client_path(href, view, path.trim()) {
                            if new != path.trim() {
                                changed = true;
                                return format!("{lead}{}={new}", name.trim());
                            }
                        }
                    }
                }
            }
            part.to_string()
        })
        .collect();
    changed.then(|| parts.join(";"))
}

/// What rewriting a response's headers changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    /// `location` / `content-location` values to set.
    pub locations: Vec<(String, String)>,
    /// Every `set-cookie` value, in order, when any of them changed (they are
    /// written back together so that their order is kept).
    pub cookies: Option<Vec<Vec<u8>>>,
}

/// The response headers rewriting may change, for this href: a filter reads only
/// these (a cookie's `Path` is rewritten only under an href path).
pub fn headers_to_read(href: &Href) -> &'static [&'static str] {
    if href.path.is_empty() {
        &["location", "content-location"]
    } else {
        &["location", "content-location", "set-cookie"]
    }
}

/// Rewrites a response's headers (names lowercase, values raw) to the client's view.
pub fn rewrite_headers(headers: &[(String, Vec<u8>)], href: &Href, view: &ClientView) -> ResponseEdits {
    let mut edits = ResponseEdits::default();
    let mut cookies = Vec::new();
    let mut cookies_changed = false;
    for (name, value) in headers {
        let text = std::str::from_utf8(value).ok();
        match name.as_str() {
            "location" | "content-location" => {
                if let Some(new) = text.and_then(|t| rewrite_location(t, href, view)) {
                    edits.locations.push((name.clone(), new));
                }
            }
            "set-cookie" => match text.and_then(|t| rewrite_cookie_path(t, href, view)) {
                Some(new) => {
                    cookies.push(new.into_bytes());
                    cookies_changed = true;
                }
                None => cookies.push(value.clone()),
            },
            _ => {}
        }
    }
    if cookies_changed {
        edits.cookies = Some(cookies);
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Href, ClientView) {
        (
            Href::parse("http://backend:8080/myapp").unwrap(),
            ClientView { scheme: "https", host: "www.example.com".into(), mount: "/blog".into() },
        )
    }

    #[test]
    fn locations() {
        let (href, view) = setup();
        let r = |v: &str| rewrite_location(v, &href, &view);
        assert_eq!(r("http://backend:8080/myapp/login?next=/x").as_deref(), Some("https://www.example.com/blog/login?next=/x"));
        assert_eq!(r("http://backend:8080/myapp").as_deref(), Some("https://www.example.com/blog"));
        assert_eq!(r("/myapp/a#frag").as_deref(), Some("/blog/a#frag"));
        assert_eq!(r("/other"), None, "outside the href path");
        assert_eq!(r("http://elsewhere/myapp/a"), None);
        assert_eq!(r("https://backend:8080/myapp/a"), None, "another scheme is another server");
        assert_eq!(r("//backend:8080/myapp"), None);
        let href80 = Href::parse("http://backend/").unwrap();
        let root = ClientView { mount: String::new(), ..view.clone() };
        assert_eq!(rewrite_location("http://backend/x", &href80, &root).as_deref(), Some("https://www.example.com/x"));
        assert_eq!(rewrite_location("http://backend:80", &href80, &root).as_deref(), Some("https://www.example.com/"));
    }

    #[test]
    fn without_an_href_path_only_urls_naming_the_backend_change() {
        // The backend honours SCRIPT_NAME and already answers in the client's view.
        let href = Href::parse("http://backend:8080/").unwrap();
        let (_, view) = setup();
        assert_eq!(rewrite_location("/blog/login", &href, &view), None);
        assert_eq!(rewrite_location("/login", &href, &view), None);
        assert_eq!(rewrite_cookie_path("sid=1; Path=/", &href, &view), None);
        assert_eq!(rewrite_cookie_path("sid=1; Path=/blog", &href, &view), None);
        assert_eq!(rewrite_location("http://backend:8080/login", &href, &view).as_deref(), Some("https://www.example.com/blog/login"));
    }

    #[test]
    fn cookie_paths() {
        let (href, view) = setup();
        let r = |v: &str| rewrite_cookie_path(v, &href, &view);
        assert_eq!(r("sid=1; Path=/myapp; HttpOnly").as_deref(), Some("sid=1; Path=/blog; HttpOnly"));
        assert_eq!(r("sid=1; path=/myapp/admin").as_deref(), Some("sid=1; path=/blog/admin"));
        assert_eq!(r("sid=1; Path=/other"), None);
        assert_eq!(r("sid=1"), None);
        assert_eq!(r("path=/myapp"), None, "the cookie's own name is not an attribute");
    }

    #[test]
    fn headers_keep_cookie_order_and_bytes() {
        let (href, view) = setup();
        let h = |n: &str, v: &[u8]| (n.to_string(), v.to_vec());
        let headers = [
            h("set-cookie", b"a=1; Path=/other"),
            h("location", b"/myapp/x"),
            h("set-cookie", b"b=\xff; Path=/myapp"),
            h("set-cookie", b"c=3; Path=/myapp/c"),
        ];
        let e = rewrite_headers(&headers, &href, &view);
        assert_eq!(e.locations, [("location".to_string(), "/blog/x".to_string())]);
        let cookies = e.cookies.unwrap();
        assert_eq!(cookies, [b"a=1; Path=/other".to_vec(), b"b=\xff; Path=/myapp".to_vec(), b"c=3; Path=/blog/c".to_vec()]);
        assert_eq!(rewrite_headers(&headers[..1], &href, &view), ResponseEdits::default());
    }
}
